//! "Durable before acknowledged", against a disk that loses whatever was not fsynced.
//!
//! `kill -9` alone cannot catch a missing fsync (the page cache outlives the process),
//! so here the ledger lives on [`LossyFs`], and after the kill the file system crashes
//! too: every write never synced is gone.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lossy_fs::LossyFs;
use crate::support::{BINARY, Server};

const GRANT: i64 = 1_000_000;
const CLIENTS: usize = 4;

/// What one client sent, and what it was answered with 200.
#[derive(Default)]
struct Client {
    attempted: Vec<String>,
    authorized: Vec<(String, Value)>,
    settled: Vec<(String, Value)>,
}

fn traffic(server: &Server, client: usize, stop: &AtomicBool, answers: &AtomicUsize) -> Client {
    let mut seen = Client::default();
    let answered = |(status, body): (u16, Value)| {
        assert_eq!(status, 200, "{body}");
        answers.fetch_add(1, Ordering::Relaxed);
        body
    };
    for index in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("c{client}-{index}");
        seen.attempted.push(id.clone());
        let Ok(answer) = server.try_post(
            "/v1/authorize",
            &json!({"transaction_id": id, "tenant": "acme", "operation": "person.enrich", "items": ["a", "b"]}),
        ) else {
            break;
        };
        seen.authorized.push((id.clone(), answered(answer)));
        // One transaction in three stays open, holding its credits.
        if index % 3 == 2 {
            continue;
        }
        let Ok(receipt) = server.try_post(
            "/v1/settle",
            &json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}}),
        ) else {
            break;
        };
        seen.settled.push((id, answered(receipt)));
    }
    seen
}

#[test]
fn acknowledged_answers_survive_a_crash_that_loses_unsynced_writes() {
    let fs = LossyFs::mount().expect("mount the lossy file system (needs /dev/fuse and root)");
    let db = fs.path().join("ledger.db");
    // The policy's compile cache lives on a real disk: the restart need not recompile.
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let cache_dir = cache_dir.to_str().unwrap();
    let start = || Server::start_with_args(Some("smarte"), &db, None, &["--cache-dir", cache_dir]);

    let server = start();
    server.grant("acme", "default", GRANT, "welcome");
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let server = server.with_token(None);
            let (stop, answers) = (Arc::clone(&stop), Arc::clone(&answers));
            std::thread::spawn(move || traffic(&server, client, &stop, &answers))
        })
        .collect();
    // Pull the plug in the middle of the traffic: answers are still going out.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(1500) && answers.load(Ordering::Relaxed) < 3000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let clients: Vec<Client> = clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .collect();
    fs.crash();

    let server = start();
    let mut lost = Vec::new();
    let (mut open, mut settled) = (0, 0);
    let attempted = clients.iter().flat_map(|client| &client.attempted);
    let mut audits = std::collections::HashMap::new();
    for id in attempted {
        let (status, audit) = server.get(&format!("/v1/transactions/{id}"));
        match (status, audit["state"].as_str()) {
            (404, _) => continue,
            (200, Some("open")) => open += 1,
            (200, Some("settled")) => settled += 1,
            _ => panic!("{id}: {status} {audit}"),
        }
        audits.insert(id.clone(), audit);
    }
    let authorized: Vec<_> = clients.iter().flat_map(|c| &c.authorized).collect();
    let receipts: Vec<_> = clients.iter().flat_map(|c| &c.settled).collect();
    for (id, answer) in &authorized {
        match audits.get(id) {
            Some(audit) if &audit["authorization"] == answer => {}
            Some(audit) => lost.push(format!(
                "{id}: answered {answer}, the ledger has {}",
                audit["authorization"]
            )),
            None => lost.push(format!("{id}: authorize answered, not on the ledger")),
        }
    }
    for (id, receipt) in &receipts {
        let audit = audits.get(id).unwrap_or(&Value::Null);
        let kinds: Vec<_> = audit["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| entry["kind"].as_str().unwrap_or_default())
            .collect();
        if audit["state"] != json!("settled")
            || &audit["receipt"] != receipt
            || kinds != ["hold", "capture", "release"]
        {
            lost.push(format!(
                "{id}: settle answered {receipt}, the ledger has state {} and entries {kinds:?}",
                audit["state"]
            ));
        }
    }
    eprintln!(
        "{} authorizes and {} settles acknowledged before the crash; after it the ledger has {open} open and {settled} settled transactions",
        authorized.len(),
        receipts.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged answers ({} authorizes, {} settles) are not on the ledger after the crash; first ones:\n{}",
        lost.len(),
        authorized.len() + receipts.len(),
        authorized.len(),
        receipts.len(),
        lost[..lost.len().min(5)].join("\n")
    );
    assert!(
        authorized.len() >= 50,
        "too little traffic to prove anything: {} authorizes acknowledged",
        authorized.len()
    );

    // Every transaction holds 2 and, settled with one record, charges 1.
    let expected = json!({"tenant": "acme", "balances": {"default": GRANT - 2 * open - settled}, "held": {"default": 2 * open}});
    assert_eq!(server.balances("acme"), expected);
    for (id, answer) in authorized.iter().step_by(7) {
        let (status, again) = server.post("/v1/authorize", json!({"transaction_id": id, "tenant": "acme", "operation": "person.enrich", "items": ["a", "b"]}));
        assert_eq!((status, &again), (200, answer), "authorize {id} repeated");
    }
    for (id, receipt) in receipts.iter().step_by(7) {
        let (status, again) = server.post(
            "/v1/settle",
            json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}}),
        );
        assert_eq!((status, &again), (200, receipt), "settle {id} repeated");
    }
    assert_eq!(server.balances("acme"), expected);
    let output = Command::new(BINARY)
        .args(["ledger", "--db"])
        .arg(&db)
        .arg("acme")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("every account equals the sum of its entries"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The ledger ran in WAL mode on the lossy file system, its shared memory mapped.
    for file in ["ledger.db-wal", "ledger.db-shm"] {
        assert!(fs.path().join(file).exists(), "no {file}");
    }
    server.kill();
}

/// The stable code of a refused call's answer.
fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn a_failed_sync_stops_the_meter_and_loses_no_acknowledged_credit() {
    let fs = LossyFs::mount().expect("mount the lossy file system (needs /dev/fuse and root)");
    let db = fs.path().join("ledger.db");
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let cache_dir = cache_dir.to_str().unwrap();
    let start = || Server::start_with_args(Some("smarte"), &db, None, &["--cache-dir", cache_dir]);
    let authorize = |id: &str| json!({"transaction_id": id, "tenant": "acme", "operation": "person.enrich", "items": ["a", "b"]});
    let settle =
        |id: &str| json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}});

    let server = start();
    server.grant("acme", "default", GRANT, "welcome");
    let (mut authorized, mut settled) = (Vec::new(), Vec::new());
    for index in 0..30 {
        let id = format!("before-{index}");
        let (status, answer) = server.post("/v1/authorize", authorize(&id));
        assert_eq!(status, 200, "authorize {id}: {answer}");
        authorized.push((id.clone(), answer));
        // One transaction in three stays open, holding its credits.
        if index % 3 == 2 {
            continue;
        }
        let (status, receipt) = server.post("/v1/settle", settle(&id));
        assert_eq!(status, 200, "settle {id}: {receipt}");
        settled.push((id, receipt));
    }
    let open_id = authorized[2].0.clone();

    // The disk starts failing: the next decision's sync fails, so it is never answered
    // 200. Its own answer carries the failed write; if the periodic sweep's empty sync
    // failed first (a window of a millisecond a second), the meter had stopped already.
    fs.fail_syncs();
    let (status, refused) = server.post("/v1/authorize", authorize("refused"));
    assert_eq!(
        status, 503,
        "an authorize whose sync failed was answered: {refused}"
    );
    assert!(
        ["store_unavailable", "sequencer_stopped"].contains(&code(&refused)),
        "{refused}"
    );
    let first_code = code(&refused).to_owned();
    // Every later call fails, whatever it is.
    let stopped = |what: &str, (status, body): (u16, Value)| {
        assert_eq!(
            (status, code(&body)),
            (503, "sequencer_stopped"),
            "{what} after the failed sync: {body}"
        );
    };
    stopped(
        "an authorize",
        server.post("/v1/authorize", authorize("after-fault")),
    );
    stopped("a settle", server.post("/v1/settle", settle(&open_id)));
    stopped(
        "the refused authorize repeated",
        server.post("/v1/authorize", authorize("refused")),
    );
    stopped(
        "a grant",
        server.post(
            "/v1/tenants/acme/grants",
            json!({"grant_id": "after-fault", "balance": "default", "amount": 5}),
        ),
    );
    // The disk keeps failing a while (the checkpoints and the views try it too), then
    // works again, long enough for the periodic sweep and checkpoints to run
    // and sync: the live state is still never used again.
    std::thread::sleep(Duration::from_millis(300));
    let refused_syncs = fs.heal_syncs();
    std::thread::sleep(Duration::from_millis(1200));
    stopped(
        "an authorize once syncs work again",
        server.post("/v1/authorize", authorize("after-heal")),
    );
    stopped(
        "a settle once syncs work again",
        server.post("/v1/settle", settle(&open_id)),
    );
    let (status, health) = server.get("/healthz");
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "failing", "{health}");
    assert_eq!(health["code"], "sequencer_stopped", "{health}");
    let reason = health["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("log") && reason.contains("disk"),
        "the reason names neither the log nor the disk: {health}"
    );
    eprintln!(
        "the first call after the fault: 503 {first_code} ({}); {refused_syncs} sync(s) refused; /healthz: {reason}",
        refused["error"]["message"]
    );
    server.kill();
    fs.crash();

    let server = start();
    let (status, health) = server.get("/healthz");
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    let receipts: std::collections::HashMap<_, _> = settled.iter().cloned().collect();
    let mut lost = Vec::new();
    for (id, answer) in &authorized {
        let (status, audit) = server.get(&format!("/v1/transactions/{id}"));
        let kinds: Vec<_> = audit["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| entry["kind"].as_str().unwrap_or_default())
            .collect();
        let faithful = status == 200
            && &audit["authorization"] == answer
            && match receipts.get(id) {
                Some(receipt) => {
                    audit["state"] == "settled"
                        && &audit["receipt"] == receipt
                        && kinds == ["hold", "capture", "release"]
                }
                None => audit["state"] == "open" && kinds == ["hold"],
            };
        if !faithful {
            lost.push(format!(
                "{id}: answered {answer} and {:?}; the ledger has {status} {audit}",
                receipts.get(id)
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged transactions are not on the ledger as answered:\n{}",
        lost.len(),
        authorized.len(),
        lost.join("\n")
    );
    // Never decided: refused before the sequencer.
    for id in ["after-fault", "after-heal"] {
        let (status, audit) = server.get(&format!("/v1/transactions/{id}"));
        assert_eq!(status, 404, "{id}: {audit}");
    }
    // The refused authorize was decided and written, never answered: it is gone, or (when
    // a later sync made its log row durable) open and holding what it was decided to.
    let (status, audit) = server.get("/v1/transactions/refused");
    let refused_kept = match (status, audit["state"].as_str()) {
        (404, _) => false,
        (200, Some("open")) => true,
        _ => panic!("the refused authorize: {status} {audit}"),
    };
    let open = (authorized.len() - settled.len()) as i64 + i64::from(refused_kept);
    let charged = settled.len() as i64;
    let expected = json!({"tenant": "acme", "balances": {"default": GRANT - 2 * open - charged}, "held": {"default": 2 * open}});
    assert_eq!(server.balances("acme"), expected);
    let (status, invariants) = server.get("/v1/audit");
    assert_eq!(
        (status, &invariants["violations"]),
        (200, &json!([])),
        "{invariants}"
    );
    eprintln!(
        "after the restart: {} authorizes and {} settles acknowledged before the fault are on the ledger as answered; the refused authorize is {}",
        authorized.len(),
        settled.len(),
        if refused_kept {
            "on the ledger, open"
        } else {
            "absent"
        }
    );
    // The client retries what was refused; the meter decides again (or answers what
    // it recorded).
    let (status, answer) = server.post("/v1/authorize", authorize("refused"));
    assert_eq!(status, 200, "{answer}");
    if refused_kept {
        assert_eq!(answer, audit["authorization"]);
    }
    let (status, receipt) = server.post("/v1/settle", settle(&open_id));
    assert_eq!(status, 200, "{receipt}");
    server.kill();
}
