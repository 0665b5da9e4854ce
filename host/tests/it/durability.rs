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
