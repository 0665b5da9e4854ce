//! Webhooks (`docs/credits.md`, part 6): a `serve` delivers every event a webhook wants
//! to a real receiver (`creditgate webhook-receiver`, which checks each signature), in
//! the feed's order; a receiver that was down gets them all once it is back; a receiver
//! that refuses them gets them dead-lettered, listed and requeued; on PostgreSQL one
//! replica delivers at a time, and another takes over when it dies.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use creditgate::store::StoreLocation;
use creditgate::store::scratch::ScratchLedger;
use serde_json::{Value, json};

use crate::support::{BINARY, Server, postgres_store};

const SECRET: &str = "a-webhook-secret-of-32-bytes-ok!";
const TOKEN: &str = "admin";
/// Fast retries, so that a test sees several attempts in a second.
const RETRIES: &[&str] = &[
    "--webhook-retry-base-ms",
    "50",
    "--webhook-retry-max-ms",
    "200",
];

/// A free loopback port, for a receiver started later.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `creditgate webhook-receiver`: its stdout lines (one per event received)
/// and stderr lines (refusals, duplicates), as they come.
struct Receiver {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    complaints: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(port: u16, secret: &str) -> Self {
        let mut child = Command::new(BINARY)
            .args([
                "webhook-receiver",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--secret",
                secret,
            ])
            .env_remove("CREDITGATE_WEBHOOK_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the receiver");
        let events = Arc::new(Mutex::new(Vec::new()));
        let complaints = Arc::new(Mutex::new(Vec::new()));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        {
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    events
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(&line).unwrap());
                }
            });
        }
        {
            let complaints = Arc::clone(&complaints);
            std::thread::spawn(move || {
                for line in stderr.lines().map_while(Result::ok) {
                    complaints.lock().unwrap().push(line);
                }
            });
        }
        let receiver = Self {
            child,
            events,
            complaints,
        };
        receiver.wait_until("the receiver listens", || {
            receiver
                .complaints()
                .iter()
                .any(|line| line.contains("listening on"))
        });
        receiver
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    fn complaints(&self) -> Vec<String> {
        self.complaints.lock().unwrap().clone()
    }

    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        wait_until(what, done);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn db_of(scratch: &ScratchLedger) -> std::ffi::OsString {
    match scratch.location() {
        StoreLocation::Sqlite(path) => path.clone().into_os_string(),
        StoreLocation::Postgres(url) => url.into(),
    }
}

fn serve(db: &std::ffi::OsStr) -> Server {
    Server::start_with_args(Some("smarte"), db, Some(TOKEN), RETRIES)
}

/// Grants 100 to `tenant` and watches it at 80, 60, 40 and 20 credits.
fn watched(admin: &Server, tenant: &str) {
    let (status, body) = admin.post(
        &format!("/v1/tenants/{tenant}/grants"),
        json!({"grant_id": format!("g-{tenant}"), "balance": "default", "amount": 100}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin.call(
        "PUT",
        &format!("/v1/tenants/{tenant}/balances/default/thresholds"),
        Some(r#"{"levels":[{"credits":80},{"credits":60},{"credits":40},{"credits":20}]}"#),
    );
    assert_eq!(status, 200, "{body}");
}

/// Spends 25 credits of `tenant`: one level crossed (the last also exhausts it).
fn spend(server: &Server, tenant: &str, id: &str) {
    let items: Vec<String> = (0..25).map(|index| format!("r{index}")).collect();
    let (status, answer) = server.post(
        "/v1/authorize",
        json!({"transaction_id": id, "tenant": tenant, "operation": "person.enrich", "items": items}),
    );
    assert_eq!(
        (status, answer["admitted"].as_bool()),
        (200, Some(true)),
        "{answer}"
    );
}

fn hook(admin: &Server, id: &str, body: Value) -> Value {
    let (status, answer) = admin.call(
        "PUT",
        &format!("/v1/webhooks/{id}"),
        Some(&body.to_string()),
    );
    assert_eq!(status, 200, "{answer}");
    answer
}

fn webhook(admin: &Server, id: &str) -> Value {
    let (status, list) = admin.call("GET", "/v1/webhooks", None);
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|hook| hook["webhook_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn feed_ids(admin: &Server) -> Vec<u64> {
    let (status, page) = admin.call("GET", "/v1/events?limit=1000", None);
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_u64().unwrap())
        .collect()
}

fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|event| event["id"].as_u64().unwrap())
        .collect()
}

crate::on_both_stores! {
    /// Events raised while the receiver is down are retried until it is back, then
    /// delivered in the feed's order, each once and signed; a webhook whose secret the
    /// receiver does not know gets every event dead-lettered after its attempts, and a
    /// requeued dead letter is delivered once the secret is right.
    fn a_receiver_that_was_down_gets_every_event_in_order(store) {
        let scratch = store.create().unwrap();
        let server = serve(&db_of(&scratch));
        let admin = server.with_token(Some(TOKEN));
        watched(&admin, "acme");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/hooks/creditgate");
        let set = hook(&admin, "ops", json!({"url": url, "secret": SECRET, "after": 0}));
        assert_eq!((set["after"].as_u64(), set.get("secret")), (Some(0), None), "{set}");
        for index in 0..4 {
            spend(&server, "acme", &format!("t{index}"));
        }
        let raised = feed_ids(&admin);
        assert_eq!(raised.len(), 5, "4 levels and exhaustion");
        wait_until("failed attempts while the receiver is down", || {
            let ops = webhook(&admin, "ops");
            ops["attempts"].as_u64() >= Some(2)
                && ops["last_error"].as_str().is_some_and(|error| error.contains("could not be reached"))
        });
        assert_eq!(webhook(&admin, "ops")["after"], 0, "nothing delivered yet");

        let receiver = Receiver::start(port, SECRET);
        receiver.wait_until("every event delivered", || receiver.events().len() == 5);
        let delivered = receiver.events();
        assert_eq!(ids(&delivered), raised, "in the feed's order, each once");
        assert_eq!(delivered[0]["kind"], "balance_low");
        assert_eq!(delivered[0]["details"]["level_credits"], 80);
        assert_eq!(delivered[4]["kind"], "balance_exhausted");
        wait_until("the cursor at the last event", || {
            webhook(&admin, "ops")["after"].as_u64() == raised.last().copied()
        });
        assert_eq!(webhook(&admin, "ops")["attempts"], 0);

        // A webhook the receiver refuses (another secret): dead-lettered after 2 attempts.
        hook(
            &admin,
            "stale",
            json!({"url": url, "secret": "not-the-receivers-secret", "after": 0, "attempts_max": 2, "kinds": ["balance_low"]}),
        );
        wait_until("four dead letters (balance_low only)", || {
            webhook(&admin, "stale")["dead_letters"].as_u64() == Some(4)
        });
        let (status, dead) = admin.call("GET", "/v1/webhooks/stale/dead", None);
        assert_eq!(status, 200, "{dead}");
        let first = &dead[0];
        assert_eq!((first["attempts"].as_u64(), first["event"]["id"].as_u64()), (Some(2), Some(raised[0])));
        assert!(first["last_error"].as_str().unwrap().contains("401"), "{first}");
        assert!(receiver.complaints().iter().any(|line| line.contains("refused a delivery")));
        // Fixed, and one dead letter requeued: delivered, it leaves the dead letters.
        hook(&admin, "stale", json!({"url": url, "secret": SECRET, "kinds": ["balance_low"]}));
        let (status, requeued) = admin.call(
            "POST",
            &format!("/v1/webhooks/stale/dead/{}/requeue", raised[0]),
            None,
        );
        assert_eq!(status, 200, "{requeued}");
        wait_until("the requeued letter delivered", || {
            webhook(&admin, "stale")["dead_letters"].as_u64() == Some(3)
        });

        // Bad webhooks, unknown ones, and the token.
        for bad in [
            json!({"url": "ftp://example.com", "secret": SECRET}),
            json!({"url": url, "secret": "short"}),
            json!({"url": url, "secret": SECRET, "kinds": ["balance_high"]}),
            json!({"url": url, "secret": SECRET, "attempts_max": 0}),
            json!({"url": url, "secret": SECRET, "colour": "red"}),
        ] {
            let (status, answer) = admin.call("PUT", "/v1/webhooks/bad", Some(&bad.to_string()));
            assert_eq!(status, 400, "{bad}: {answer}");
        }
        let (status, answer) = admin.call("GET", "/v1/webhooks/nope/dead", None);
        assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("unknown_webhook")));
        let (status, _) = server.with_token(None).call("GET", "/v1/webhooks", None);
        assert_eq!(status, 401);
        let (status, left) = admin.call("DELETE", "/v1/webhooks/stale", None);
        assert_eq!((status, left.as_array().map(Vec::len)), (200, Some(1)), "{left}");
        let (status, _) = admin.call("DELETE", "/v1/webhooks/stale", None);
        assert_eq!(status, 404);
    }
}

/// Two replicas on one PostgreSQL ledger: one delivers at a time, so the receiver gets
/// each event once whichever replica raised it; when the delivering replica dies, the
/// other takes over from the shared cursor.
#[test]
fn one_replica_delivers_and_another_takes_over_when_it_dies() {
    let scratch = postgres_store().create().unwrap();
    let db = db_of(&scratch);
    let first = serve(&db);
    let second = serve(&db);
    let admin = first.with_token(Some(TOKEN));
    let port = free_port();
    let receiver = Receiver::start(port, SECRET);
    hook(
        &admin,
        "ops",
        json!({"url": format!("http://127.0.0.1:{port}/"), "secret": SECRET}),
    );
    watched(&admin, "acme");
    watched(&admin, "bravo");
    spend(&first, "acme", "a1");
    spend(&second, "bravo", "b1");
    spend(&first, "acme", "a2");
    spend(&second, "bravo", "b2");
    receiver.wait_until("four events", || receiver.events().len() == 4);
    assert_eq!(ids(&receiver.events()), feed_ids(&admin));
    drop(first);
    let admin = second.with_token(Some(TOKEN));
    spend(&second, "acme", "a3");
    spend(&second, "bravo", "b3");
    receiver.wait_until("two more, from the replica left", || {
        receiver.events().len() == 6
    });
    assert_eq!(ids(&receiver.events()), feed_ids(&admin));
    let duplicates: Vec<String> = receiver
        .complaints()
        .into_iter()
        .filter(|line| line.contains("duplicate"))
        .collect();
    assert!(duplicates.is_empty(), "{duplicates:?}");
}
