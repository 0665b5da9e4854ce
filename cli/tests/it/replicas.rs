//! Several `creditgate serve` processes on one PostgreSQL ledger: one balance that no
//! interleaving overspends, idempotency and unique marks across processes, a replica
//! killed mid-traffic, and the database going away and coming back.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use creditgate::clock::ManualClock;
use creditgate::model::{AuthorizeRequest, GrantRequest, RefillRequest, SettleRequest};
use creditgate::store::StoreLocation;
use creditgate::store::scratch::ScratchLedger;
use creditgate::{Meter, MeterConfig, PolicySource};
use serde_json::{Value, json};

use crate::support::{START_MS, Server, assert_ledger_sound, component, postgres_store};

/// `count` servers of `policy` on one fresh PostgreSQL schema.
struct Replicas {
    servers: Vec<Server>,
    scratch: ScratchLedger,
}

impl Replicas {
    fn start(policy: &str, count: usize) -> Self {
        let scratch = postgres_store().create().expect("scratch schema");
        let servers = (0..count)
            .map(|_| Server::start_with_args(Some(policy), url(&scratch), None, &[]))
            .collect();
        Self { servers, scratch }
    }

    /// Clients of each server (they do not own the processes).
    fn clients(&self) -> Vec<Server> {
        self.servers
            .iter()
            .map(|server| server.with_token(None))
            .collect()
    }
}

fn url(scratch: &ScratchLedger) -> String {
    match scratch.location() {
        StoreLocation::Postgres(url) => url.clone(),
        StoreLocation::Sqlite(path) => panic!("not a PostgreSQL ledger: {}", path.display()),
    }
}

/// Sends `count` authorizes at once (a thread each, all released together), spread over
/// the replicas in turn; `request(index)` is the body of the index-th. Their answers.
fn authorize_at_once(
    clients: &[Server],
    count: usize,
    request: impl Fn(usize) -> Value,
) -> Vec<(u16, Value)> {
    let start = Arc::new(Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|index| {
            let (client, body) = (
                clients[index % clients.len()].with_token(None),
                request(index),
            );
            let start = Arc::clone(&start);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    client.try_post("/v1/authorize", &body).expect("an answer")
                })
                .expect("thread")
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("client thread"))
        .collect()
}

#[test]
fn three_replicas_admit_exactly_the_hundred_credits_of_one_balance_to_a_thousand_authorizes() {
    let replicas = Replicas::start("smarte", 3);
    let clients = replicas.clients();
    clients[0].grant("acme", "default", 100, "welcome");
    let answers = authorize_at_once(&clients, 1_000, |index| {
        json!({"transaction_id": format!("t{index}"), "tenant": "acme",
               "operation": "person.enrich", "items": ["a"]})
    });
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let outcome = if body["admitted"] == true {
            "admitted".to_owned()
        } else {
            body["error"]["code"].as_str().unwrap_or("?").to_owned()
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("admitted".to_owned(), 100),
            ("insufficient_credits".to_owned(), 900)
        ])
    );
    for client in &clients {
        let balances = client.balances("acme");
        assert_eq!(
            (
                &balances["balances"]["default"],
                &balances["held"]["default"]
            ),
            (&json!(0), &json!(100))
        );
    }
    assert_ledger_sound(replicas.scratch.location());
}

#[test]
fn fifty_concurrent_exports_of_one_new_donor_across_replicas_charge_it_once() {
    let replicas = Replicas::start("donoratlas", 3);
    let clients = replicas.clients();
    clients[1].grant("partner", "export", 10, "export-credits");
    let answers = authorize_at_once(&clients, 50, |index| {
        json!({"transaction_id": format!("x{index}"), "tenant": "partner",
               "operation": "export", "items": ["donor-42"]})
    });
    let charged: i64 = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(body["admitted"], true, "{body}");
            body["charged"]["export"].as_i64().unwrap_or(0)
        })
        .sum();
    assert_eq!(charged, 1);
    assert_eq!(clients[2].balances("partner")["balances"]["export"], 9);
    assert_ledger_sound(replicas.scratch.location());
}

/// One client's work: authorize then settle transactions, each call retried on the
/// next replica until one answers (a killed replica gives no answer).
struct Traffic {
    clients: Vec<Server>,
    /// Answers received, counted to decide when to kill.
    answered: AtomicUsize,
}

impl Traffic {
    fn call_until_answered(&self, first: usize, path: &str, body: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        for attempt in 0.. {
            let client = &self.clients[(first + attempt) % self.clients.len()];
            match client.try_post(path, body) {
                Ok((200, answer)) => {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    return answer;
                }
                Ok((status, answer)) if status >= 500 => {
                    eprintln!("{path} answered {status} {answer}; retrying elsewhere");
                }
                Ok((status, answer)) => panic!("{path} {body}: {status} {answer}"),
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "{path} {body}: no replica answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        unreachable!()
    }
}

#[test]
fn a_replica_killed_mid_traffic_loses_no_acknowledged_charge_and_none_counts_twice() {
    const CLIENTS: usize = 12;
    const PER_CLIENT: usize = 40;
    const TENANTS: usize = 4;
    let replicas = Replicas::start("smarte", 3);
    let traffic = Arc::new(Traffic {
        clients: replicas.clients(),
        answered: AtomicUsize::new(0),
    });
    for tenant in 0..TENANTS {
        traffic.clients[0].grant(
            &format!("t{tenant}"),
            "default",
            100_000,
            &format!("g{tenant}"),
        );
    }
    let receipts = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (traffic, receipts) = (Arc::clone(&traffic), Arc::clone(&receipts));
            std::thread::spawn(move || {
                for index in 0..PER_CLIENT {
                    let id = format!("c{client}-{index}");
                    let tenant = format!("t{}", (client + index) % TENANTS);
                    let records = 1 + index % 3;
                    let items: Vec<String> = (0..records).map(|item| format!("i{item}")).collect();
                    let authorization = traffic.call_until_answered(
                        client + index,
                        "/v1/authorize",
                        &json!({"transaction_id": id, "tenant": tenant,
                                "operation": "person.enrich", "items": items}),
                    );
                    assert_eq!(authorization["admitted"], true, "{authorization}");
                    let receipt = traffic.call_until_answered(
                        client + index + 1,
                        "/v1/settle",
                        &json!({"transaction_id": id, "status": 200,
                                "attributes": {"records": records.to_string()}}),
                    );
                    receipts
                        .lock()
                        .unwrap()
                        .push((id, tenant, authorization, receipt));
                }
            })
        })
        .collect();
    // Kill the first replica once a quarter of the answers are in: mid-traffic.
    let mut servers = replicas.servers.into_iter();
    let victim = servers.next().expect("three replicas");
    let survivors: Vec<Server> = servers.collect();
    while traffic.answered.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill();
    for worker in workers {
        worker.join().expect("client");
    }

    let receipts = receipts.lock().unwrap();
    assert_eq!(receipts.len(), CLIENTS * PER_CLIENT);
    let mut charged_per_tenant: BTreeMap<String, i64> = BTreeMap::new();
    for (id, tenant, authorization, receipt) in receipts.iter() {
        let charged = receipt["charged"]["default"].as_i64().unwrap_or(0);
        *charged_per_tenant.entry(tenant.clone()).or_default() += charged;
        let (status, view) = survivors[0].get(&format!("/v1/transactions/{id}"));
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["state"], "settled", "{view}");
        let mut by_kind: BTreeMap<String, (usize, i64)> = BTreeMap::new();
        for entry in view["entries"].as_array().expect("entries") {
            let kind = entry["kind"].as_str().unwrap().to_owned();
            let slot = by_kind.entry(kind).or_default();
            slot.0 += 1;
            slot.1 += entry["amount"].as_i64().unwrap();
        }
        let held = authorization["held"]["default"].as_i64().unwrap();
        assert_eq!(by_kind.get("hold"), Some(&(1, held)), "{id}: {view}");
        assert_eq!(by_kind.get("capture"), Some(&(1, charged)), "{id}: {view}");
        assert!(
            by_kind.values().all(|(count, _)| *count == 1),
            "{id}: an entry appears twice: {view}"
        );
    }
    for (tenant, charged) in charged_per_tenant {
        let balances = survivors[1].balances(&tenant);
        assert_eq!(balances["held"]["default"], 0, "{tenant}");
        assert_eq!(
            balances["balances"]["default"].as_i64().unwrap(),
            100_000 - charged,
            "{tenant}: the balance is not the grant minus every acknowledged charge"
        );
    }
    assert_ledger_sound(replicas.scratch.location());
}

/// A TCP link to PostgreSQL the test can cut (every connection closed, new ones
/// refused) and restore: the database going away, for one server only.
struct CuttableLink {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttableLink {
    fn to(upstream: String, up: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("link port");
        let port = listener.local_addr().expect("link address").port();
        let up = Arc::new(AtomicBool::new(up));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (link_up, link_open) = (Arc::clone(&up), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !link_up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut streams = link_open.lock().unwrap();
                streams.push(client.try_clone().unwrap());
                streams.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the link's, and the link to them.
    fn through(url: &str, up: bool) -> (Self, String) {
        let (scheme_user, rest) = url.split_once('@').expect("a URL with user@host");
        let (authority, path) = rest.split_once('/').expect("a URL with a database");
        let link = Self::to(authority.to_owned(), up);
        let linked = format!("{scheme_user}@127.0.0.1:{}/{path}", link.port);
        (link, linked)
    }
}

fn authorize(server: &Server, id: &str) -> (u16, Value) {
    server
        .try_post(
            "/v1/authorize",
            &json!({"transaction_id": id, "tenant": "acme", "operation": "person.enrich",
                    "items": ["a"]}),
        )
        .expect("the server answers even when its database does not")
}

/// Retries `call` until it answers 200, for at most 20 s.
fn until_ok(mut call: impl FnMut() -> (u16, Value)) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call();
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_store_unavailable((status, body): (u16, Value)) {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
}

#[test]
fn while_postgres_is_unreachable_requests_fail_closed_and_the_server_recovers_by_itself() {
    let scratch = postgres_store().create().expect("scratch schema");
    let (link, linked_url) = CuttableLink::through(&url(&scratch), true);
    let server = Server::start_with_args(Some("smarte"), &linked_url, None, &[]);
    server.grant("acme", "default", 10, "welcome");
    assert_eq!(authorize(&server, "t1").1["admitted"], true);

    link.cut();
    assert_store_unavailable(authorize(&server, "t2"));
    assert_store_unavailable(
        server
            .try_post(
                "/v1/settle",
                &json!({"transaction_id": "t1", "status": 200,
                                              "attributes": {"records": "1"}}),
            )
            .expect("an answer"),
    );
    assert_store_unavailable(server.get("/v1/tenants/acme/balances"));

    link.restore();
    let second = until_ok(|| authorize(&server, "t2"));
    assert_eq!(second["admitted"], true, "{second}");
    let receipt = until_ok(|| {
        server
            .try_post(
                "/v1/settle",
                &json!({"transaction_id": "t1", "status": 200,
                                              "attributes": {"records": "1"}}),
            )
            .expect("an answer")
    });
    assert_eq!(receipt["charged"]["default"], 1);
    // The failed attempts wrote nothing: one hold for t2, one hold and one capture for t1.
    for (id, entries) in [("t1", 2), ("t2", 1)] {
        let (_, view) = server.get(&format!("/v1/transactions/{id}"));
        assert_eq!(
            view["entries"].as_array().map(Vec::len),
            Some(entries),
            "{view}"
        );
    }
    let balances = server.balances("acme");
    assert_eq!(
        (
            &balances["balances"]["default"],
            &balances["held"]["default"]
        ),
        (&json!(8), &json!(1))
    );
    assert_ledger_sound(scratch.location());
}

#[test]
fn a_server_started_while_postgres_is_unreachable_fails_closed_until_it_can_reach_it() {
    let scratch = postgres_store().create().expect("scratch schema");
    let (link, linked_url) = CuttableLink::through(&url(&scratch), false);
    let server = Server::start_with_args(Some("smarte"), &linked_url, None, &[]);
    assert_store_unavailable(authorize(&server, "t1"));
    link.restore();
    let admin = server.with_token(None);
    until_ok(|| {
        admin
            .try_post(
                "/v1/tenants/acme/grants",
                &json!({"grant_id": "welcome", "balance": "default", "amount": 5}),
            )
            .expect("an answer")
    });
    let first = until_ok(|| authorize(&server, "t1"));
    assert_eq!(first["admitted"], true, "{first}");
    // The starting policy was recorded once the database was back.
    let (status, policy) = server.get("/v1/policy");
    assert_eq!(status, 200, "{policy}");
    assert_eq!(
        policy["history"].as_array().map(Vec::len),
        Some(1),
        "{policy}"
    );
    assert_ledger_sound(scratch.location());
}

/// Two meters on one PostgreSQL ledger, as two replicas, on one hand-driven clock.
fn two_replicas_on(scratch: &ScratchLedger, clock: &ManualClock) -> (Meter, Meter) {
    let open = || {
        let mut config = MeterConfig::new(scratch.location().clone());
        config.clock = Arc::new(clock.clone());
        config.sweep_interval_ms = 0;
        Meter::open(config, PolicySource::Component(component("smarte"))).expect("replica")
    };
    (open(), open())
}

fn enrich(id: &str, items: &[&str]) -> AuthorizeRequest {
    AuthorizeRequest {
        transaction_id: Some(id.to_owned()),
        tenant: "acme".to_owned(),
        operation: "person.enrich".to_owned(),
        items: items.iter().map(|item| (*item).to_owned()).collect(),
        ..AuthorizeRequest::default()
    }
}

#[test]
fn a_hold_taken_on_one_replica_lapses_and_the_other_replica_releases_it() {
    let scratch = postgres_store().create().expect("scratch schema");
    let clock = ManualClock::starting_at(START_MS);
    let (first, second) = two_replicas_on(&scratch, &clock);
    first
        .grant(GrantRequest {
            grant_id: "welcome".to_owned(),
            tenant: "acme".to_owned(),
            balance: "default".to_owned(),
            amount: 3,
            terms: Default::default(),
        })
        .unwrap();
    assert!(
        first
            .authorize(enrich("t1", &["a", "b", "c"]))
            .unwrap()
            .admitted
    );
    let while_held = second.authorize(enrich("t2", &["a"])).unwrap();
    assert_eq!(
        while_held.error.map(|error| error.code),
        Some("insufficient_credits".to_owned())
    );

    clock.advance_ms(first.policy().hold_ttl_ms);
    let after_expiry = second.authorize(enrich("t3", &["a"])).unwrap();
    assert!(after_expiry.admitted, "{after_expiry:?}");
    let settle = first.settle(SettleRequest {
        transaction_id: "t1".to_owned(),
        status: 200,
        attributes: [("records".to_owned(), "3".to_owned())].into(),
        body: None,
    });
    assert_eq!(settle.unwrap_err().code(), "hold_expired");
    let balances = second.balances("acme").unwrap();
    assert_eq!(
        (balances.balances["default"], balances.held["default"]),
        (2, 1)
    );
    let kinds: Vec<String> = first
        .transaction("t1")
        .unwrap()
        .entries
        .into_iter()
        .map(|entry| entry.kind)
        .collect();
    assert_eq!(kinds, ["hold", "expire"]);
    assert_ledger_sound(scratch.location());
}

/// L5 across replicas: three meters on one PostgreSQL ledger sweep at the same instant
/// once a refill's period starts; one of them grants the period's lot and expires the
/// last period's, the others find it done. Sweeping again, on any of them, grants
/// nothing more.
#[test]
fn three_replicas_sweeping_at_once_grant_a_refill_period_once_and_expire_its_last_lot_once() {
    let scratch = postgres_store().create().expect("scratch schema");
    let clock = ManualClock::starting_at(START_MS);
    let open = || {
        let mut config = MeterConfig::new(scratch.location().clone());
        config.clock = Arc::new(clock.clone());
        config.sweep_interval_ms = 0;
        Meter::open(config, PolicySource::Component(component("smarte"))).expect("replica")
    };
    let replicas = [open(), open(), open()];
    let refill = RefillRequest {
        balance: "default".to_owned(),
        amount: 50,
        every: "day".to_owned(),
        time_zone: "Europe/Paris".to_owned(),
        anchor_ms: Some(START_MS as i64),
        mode: "reset".to_owned(),
        rollover_cap: None,
        priority: 0,
        category: None,
    };
    replicas[0]
        .set_refill("acme", "daily", Some(&refill))
        .unwrap();
    assert!(
        replicas[1]
            .authorize(enrich("t1", &["a"]))
            .unwrap()
            .admitted
    );
    for day in 1..=3u64 {
        clock.advance_ms(86_400_000);
        let barrier = Barrier::new(replicas.len());
        std::thread::scope(|scope| {
            for replica in &replicas {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    replica.expire_due().unwrap();
                });
            }
        });
        for replica in &replicas {
            replica.expire_due().unwrap();
        }
        let lots = replicas[2].lots("acme").unwrap().lots.unwrap();
        let open_lots: Vec<_> = lots.iter().filter(|lot| lot.state == "open").collect();
        assert_eq!(
            lots.len() as u64,
            day + 1,
            "day {day}: one lot a period: {lots:?}"
        );
        assert_eq!(open_lots.len(), 1, "day {day}: {lots:?}");
        assert_eq!(open_lots[0].remaining, 50);
        let views = replicas[usize::try_from(day).unwrap() % 3]
            .refills("acme")
            .unwrap();
        assert_eq!(
            views[0].last_start_ms,
            Some(START_MS as i64 + i64::try_from(day).unwrap() * 86_400_000)
        );
    }
    let journal = replicas[0].journal("acme", 1_000).unwrap();
    let count = |kind: &str| journal.iter().filter(|entry| entry.kind == kind).count();
    assert_eq!((count("grant"), count("lot_expire")), (4, 3), "{journal:?}");
    assert_ledger_sound(scratch.location());
}

/// The event feed across replicas: three `serve` processes on one PostgreSQL ledger
/// raise events at once (each authorize crosses a level), while a reader tails the feed
/// through one of them with its cursor. The reader sees every event, once, in the order
/// of their ids: an event committed late never has an id below one already read (ids
/// are drawn under the events lock, held to commit).
#[test]
fn a_reader_tailing_the_feed_misses_no_event_raised_by_three_replicas_at_once() {
    const TENANTS: usize = 6;
    const SPENDS: usize = 9;
    let replicas = Replicas::start("smarte", 3);
    let clients = replicas.clients();
    let levels: Vec<Value> = (1..=9)
        .map(|level| json!({"credits": level * 10}))
        .collect();
    for tenant in 0..TENANTS {
        let (status, body) = clients[0].post(
            &format!("/v1/tenants/t{tenant}/grants"),
            json!({"grant_id": format!("g{tenant}"), "balance": "default", "amount": 95}),
        );
        assert_eq!(status, 200, "{body}");
        let (status, body) = clients[tenant % 3].call(
            "PUT",
            &format!("/v1/tenants/t{tenant}/balances/default/thresholds"),
            Some(&json!({ "levels": levels }).to_string()),
        );
        assert_eq!(status, 200, "{body}");
    }
    let spending_done = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut after = 0;
            let mut seen: Vec<u64> = Vec::new();
            loop {
                let done = spending_done.load(Ordering::Acquire);
                let (status, page) = clients[0].call(
                    "GET",
                    &format!("/v1/events?after={after}&limit=7&wait_ms=200"),
                    None,
                );
                assert_eq!(status, 200, "{page}");
                let events = page["events"].as_array().unwrap();
                seen.extend(events.iter().map(|event| event["id"].as_u64().unwrap()));
                after = page["next_after"].as_u64().unwrap();
                if done && events.is_empty() {
                    return seen;
                }
            }
        });
        std::thread::scope(|spenders| {
            for tenant in 0..TENANTS {
                let clients = &clients;
                spenders.spawn(move || {
                    for spend in 0..SPENDS {
                        let items: Vec<String> = (0..10).map(|item| format!("r{item}")).collect();
                        let (status, answer) = clients[(tenant + spend) % 3].post(
                            "/v1/authorize",
                            json!({"tenant": format!("t{tenant}"), "operation": "person.enrich", "items": items}),
                        );
                        assert_eq!(status, 200, "{answer}");
                    }
                });
            }
        });
        spending_done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    let (status, page) = clients[1].call("GET", "/v1/events?limit=1000", None);
    assert_eq!(status, 200);
    let all: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_u64().unwrap())
        .collect();
    // 95 credits through 9 levels of 10 each: every spend crosses one, and the last
    // (down to 5) exhausts nothing.
    assert_eq!(all.len(), TENANTS * SPENDS, "{all:?}");
    assert_eq!(
        seen, all,
        "the tailing reader saw every event, once, in order"
    );
    assert_ledger_sound(replicas.scratch.location());
}

/// L5 with three `serve` processes on one PostgreSQL ledger, each sweeping every
/// second on its own clock: a refill's period that starts while they run is granted
/// once, a promotional lot that expires at the same instant expires once, and each is
/// raised as an event once (with the lot's warning, once).
#[test]
fn three_serve_processes_grant_a_refill_period_and_a_scheduled_grant_once_and_expire_a_lot_once() {
    let replicas = Replicas::start("smarte", 3);
    let clients = replicas.clients();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let (status, body) = clients[0].call(
        "PUT",
        "/v1/tenants/acme/balances/default/thresholds",
        Some(r#"{"lot_expiring_lead_ms":60000}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = clients[1].post(
        "/v1/tenants/acme/grants",
        json!({"grant_id": "promo", "balance": "default", "amount": 30,
               "category": "promotional", "expires_at_ms": now_ms + 1_500}),
    );
    assert_eq!(status, 200, "{body}");
    let anchor_ms = now_ms + 1_500;
    let (status, body) = clients[2].call(
        "PUT",
        "/v1/tenants/acme/refills/hourly",
        Some(
            &json!({"balance": "default", "amount": 100, "every": "hour", "mode": "reset",
                    "anchor_ms": anchor_ms})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = clients[0].post(
        "/v1/tenants/acme/grants",
        json!({"grant_id": "launch", "balance": "default", "amount": 20,
               "effective_at_ms": now_ms + 1_500}),
    );
    assert_eq!(
        (status, &body["balances"]["default"]),
        (200, &json!(30)),
        "{body}"
    );
    // Every replica sweeps at least twice past both instants.
    std::thread::sleep(Duration::from_millis(4_000));
    let (status, balances) = clients[0].call("GET", "/v1/tenants/acme/balances?lots=true", None);
    assert_eq!(status, 200, "{balances}");
    let lots = balances["lots"].as_array().unwrap();
    let states: BTreeMap<&str, (&str, i64)> = lots
        .iter()
        .map(|lot| {
            (
                lot["grant_id"].as_str().unwrap(),
                (
                    lot["state"].as_str().unwrap(),
                    lot["remaining"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    let refill_lot = format!("refill:hourly:{anchor_ms}");
    assert_eq!(
        states,
        BTreeMap::from([
            ("promo", ("expired", 0)),
            ("launch", ("open", 20)),
            (refill_lot.as_str(), ("open", 100))
        ]),
        "{lots:?}"
    );
    assert_eq!(balances["scheduled"], json!([]), "{balances}");
    let (status, journal) = clients[1].call("GET", "/v1/tenants/acme/journal", None);
    assert_eq!(status, 200);
    let kinds: Vec<&str> = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["grant", "lot_expire", "grant", "grant"],
        "{journal}"
    );
    let (status, page) = clients[2].call("GET", "/v1/events", None);
    assert_eq!(status, 200);
    let mut events: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    events.sort_unstable();
    // The promotional lot expires in the batch that grants the period (both at the
    // same instant): the balance never shows zero, and nothing says it did.
    assert_eq!(
        events,
        ["lot_expired", "lot_expiring", "refill_granted"],
        "{page}"
    );
    assert_ledger_sound(replicas.scratch.location());
}

/// The digest `GET /v1/policy` of `client` says its replica runs.
fn running(client: &Server) -> String {
    let (status, policy) = client.get("/v1/policy");
    assert_eq!(status, 200, "{policy}");
    policy["active"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls `condition` every 10 ms until it holds; panics after `within`. How long it took.
fn until(within: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// One activation for every replica (issue 15, part 5): a policy activated through
/// replica 1 is taken up by replicas 2 and 3 (the activation's NOTIFY wakes them; a
/// poll every second is the fallback) while traffic flows through all three, and no
/// request fails. `GET /v1/policy` on any replica then lists the three and what each
/// runs. The time it took is printed; it is asserted only against a bound that a
/// working follower never comes near, since the test machine is shared.
#[test]
fn an_activation_through_one_replica_reaches_the_others_under_traffic() {
    let replicas = Replicas::start("smarte", 3);
    let clients = replicas.clients();
    clients[0].grant("acme", "default", 1_000_000, "g");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let traffic: Vec<_> = replicas
        .clients()
        .into_iter()
        .enumerate()
        .map(|(replica, client)| {
            let (stop, served, failed) = (
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&failed),
            );
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("r{replica}-{n}");
                    n += 1;
                    let (status, answer) = authorize(&client, &id);
                    let settled = client.post(
                        "/v1/settle",
                        json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}}),
                    );
                    if status != 200 || answer["admitted"] != true || settled.0 != 200 {
                        failed.lock().unwrap().push(format!("{status} {answer} {settled:?}"));
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    until(Duration::from_secs(10), || {
        served.load(Ordering::Relaxed) >= 30
    });

    let candidate = component("pricier_funding");
    let digest = creditgate::policy::PolicyDigest::of(&candidate).to_string();
    let (status, body) = clients[0].put_bytes("/v1/policy", &candidate);
    assert_eq!(status, 200, "{body}");
    let took = until(Duration::from_secs(5), || {
        clients[1..].iter().all(|client| running(client) == digest)
    });
    println!("replicas 2 and 3 took up the activation through replica 1 in {took:?}");
    let before = served.load(Ordering::Relaxed);
    until(Duration::from_secs(10), || {
        served.load(Ordering::Relaxed) >= before + 30
    });
    stop.store(true, Ordering::Relaxed);
    for thread in traffic {
        thread.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());

    // Every replica's heartbeat shows the new digest (within a beat).
    until(Duration::from_secs(5), || {
        let (_, policy) = clients[2].get("/v1/policy");
        let replicas = policy["active"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        replicas.len() == 3 && replicas.iter().all(|replica| replica["digest"] == digest)
    });
    assert_ledger_sound(replicas.scratch.location());
}

/// A replica that cannot load the ledger's latest activation (here: its fuel budget is
/// the default, and the module's probe calls cost more than half of it, which the
/// activating replica's larger budget allowed) keeps serving the last good policy, and
/// says so in `GET /v1/policy` and `/metrics`.
#[test]
fn a_replica_that_cannot_load_an_activation_serves_the_last_good_policy_and_says_so() {
    let scratch = postgres_store().create().expect("scratch schema");
    let generous = Server::start_with_args(
        Some("smarte"),
        url(&scratch),
        None,
        &[
            "--policy-fuel-per-call",
            "1000000000",
            "--policy-wall-ms-per-call",
            "5000",
            "--replica-name",
            "generous",
        ],
    );
    let strict = Server::start_with_args(
        Some("smarte"),
        url(&scratch),
        None,
        &["--replica-name", "strict"],
    );
    let smarte = running(&strict);
    let slow = component("slow_legal");
    let digest = creditgate::policy::PolicyDigest::of(&slow).to_string();
    let (status, body) = generous.put_bytes("/v1/policy", &slow);
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(10), || {
        let (_, policy) = strict.get("/v1/policy");
        policy["active"]["replicas"]
            .as_array()
            .is_some_and(|replicas| {
                replicas.iter().any(|replica| {
                    replica["replica"] == "strict"
                        && replica["behind"] == digest.as_str()
                        && replica["digest"] == smarte.as_str()
                        && replica["error"]
                            .as_str()
                            .is_some_and(|error| error.contains("contract/cost"))
                })
            })
    });
    assert_eq!(running(&strict), smarte, "the last good policy stays");
    strict.grant("acme", "default", 5, "g");
    let (status, answer) = authorize(&strict, "still-served");
    assert_eq!(
        (status, &answer["admitted"]),
        (200, &json!(true)),
        "{answer}"
    );
    let metrics = ureq::get(&format!("{}/metrics", strict.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "creditgate_policy_behind 1"),
        "{metrics}"
    );
}

/// The shadow report `client` answers (None: `404 no_shadow`).
fn shadow_of(client: &Server) -> Option<Value> {
    match client.get("/v1/policy/shadow") {
        (200, report) => Some(report),
        (404, body) if body["error"]["code"] == "no_shadow" => None,
        (status, body) => panic!("{status} {body}"),
    }
}

/// A shadow for every replica (issue 15, part 5): a shadow set through replica 1 runs on
/// replicas 2 and 3 within a second or so; the report asked of any replica counts what
/// the candidate saw on all three; cleared through replica 2, no replica shadows; set
/// again and promoted through replica 3, every replica runs the candidate and none
/// shadows. No request fails meanwhile.
#[test]
fn a_shadow_set_through_one_replica_runs_on_every_replica_and_reports_all_their_traffic() {
    let replicas = Replicas::start("smarte", 3);
    let clients = replicas.clients();
    clients[0].grant("acme", "default", 1_000_000, "g");
    let candidate = component("pricier_funding");
    let digest = creditgate::policy::PolicyDigest::of(&candidate).to_string();
    let shadowed_everywhere = |clients: &[Server]| {
        clients.iter().all(|client| {
            shadow_of(client).is_some_and(|report| report["shadow"]["digest"] == digest)
        })
    };

    let (status, body) = clients[0].put_bytes("/v1/policy?mode=shadow", &candidate);
    assert_eq!(status, 200, "{body}");
    let took = until(Duration::from_secs(5), || shadowed_everywhere(&clients));
    println!("replicas 2 and 3 took up the shadow set through replica 1 in {took:?}");

    const FUNDING_CALLS_PER_REPLICA: usize = 5;
    for (replica, client) in clients.iter().enumerate() {
        for n in 0..FUNDING_CALLS_PER_REPLICA {
            let id = format!("funding-{replica}-{n}");
            let (status, answer) = client.post(
                "/v1/authorize",
                json!({"transaction_id": id, "tenant": "acme", "operation": "funding.enrich",
                        "items": ["a"]}),
            );
            assert_eq!(
                (status, &answer["admitted"]),
                (200, &json!(true)),
                "{answer}"
            );
            let (status, settled) = client.post(
                "/v1/settle",
                json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}}),
            );
            assert_eq!(status, 200, "{settled}");
        }
    }
    // Each replica's figures reach the others with its next heartbeat (every second).
    let calls = (FUNDING_CALLS_PER_REPLICA * clients.len()) as u64;
    for client in &clients {
        until(Duration::from_secs(5), || {
            let report = shadow_of(client).expect("a shadow");
            report["replicas"].as_array().map(Vec::len) == Some(3)
                && report["authorizes_compared"] == calls
                && report["settles_compared"] == calls
        });
        let report = shadow_of(client).unwrap();
        assert_eq!(report["authorize_differences"], calls, "{report}");
        assert_eq!(report["by_tenant"]["acme"]["authorize"], calls, "{report}");
    }

    let (status, body) = clients[1].call("DELETE", "/v1/policy/shadow", None);
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(5), || {
        clients.iter().all(|client| shadow_of(client).is_none())
    });

    let (status, body) = clients[2].put_bytes("/v1/policy?mode=shadow", &candidate);
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(5), || shadowed_everywhere(&clients));
    let (status, body) = clients[2].post("/v1/policy/shadow/promote", json!({}));
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(5), || {
        clients
            .iter()
            .all(|client| running(client) == digest && shadow_of(client).is_none())
    });
    assert_ledger_sound(replicas.scratch.location());
}
