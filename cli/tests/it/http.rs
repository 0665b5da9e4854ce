//! The sidecar over real HTTP: a `creditgate serve` process on a loopback port.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{BINARY, Server, component, component_path};

fn ledger() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ledger.db");
    (dir, db)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn http_authorize_then_settle_charges_a_delivered_enrichment() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 10, "welcome");
    let (status, answer) = server.post(
        "/v1/authorize",
        json!({"transaction_id": "t1", "tenant": "acme", "operation": "person.enrich", "items": ["jane@example.com", "joe@example.com"]}),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["admitted"], json!(true));
    assert_eq!(answer["held"], json!({"default": 2}));
    assert_eq!(answer["balances"], json!({"default": 8}));
    assert_eq!(answer["policy"]["name"], json!("smarte"));
    assert_eq!(answer["policy"]["digest"].as_str().map(str::len), Some(64));

    let (status, receipt) = server.post(
        "/v1/settle",
        json!({"transaction_id": "t1", "status": 200, "attributes": {"records": "1"}}),
    );
    assert_eq!(status, 200);
    assert_eq!(receipt["charged"], json!({"default": 1}));
    assert_eq!(receipt["released"], json!({"default": 1}));
    assert_eq!(receipt["headers"]["credits-deducted"], json!("1"));
    assert_eq!(receipt["headers"]["x-transaction-id"], json!("t1"));
    assert_eq!(server.balances("acme")["balances"], json!({"default": 9}));

    let (status, again) = server.post(
        "/v1/settle",
        json!({"transaction_id": "t1", "status": 200, "attributes": {"records": "2"}}),
    );
    assert_eq!(
        (status, &again),
        (200, &receipt),
        "a repeated settle must return the first receipt"
    );

    let (status, audit) = server.get("/v1/transactions/t1");
    assert_eq!(status, 200);
    assert_eq!(audit["state"], json!("settled"));
    let kinds: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["hold", "capture", "release"]);
}

#[test]
fn http_policy_refusal_is_a_200_answer_carrying_the_clients_status() {
    let (_dir, db) = ledger();
    let server = Server::start("donoratlas", &db, None);
    let (status, answer) = server.post(
        "/v1/authorize",
        json!({"tenant": "p", "operation": "enhance", "items": ["a"]}),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["admitted"], json!(false));
    assert_eq!(answer["status"], json!(402));
    assert_eq!(answer["error"]["code"], json!("payment_required"));
}

#[test]
fn http_partial_enhancement_batch_reports_the_documented_meta() {
    let (_dir, db) = ledger();
    let server = Server::start("donoratlas", &db, None);
    server.grant("p", "enhancement", 3, "g1");
    let persons: Vec<String> = (0..10).map(|i| format!("person-{i}")).collect();
    let (status, answer) = server.post(
        "/v1/authorize",
        json!({"tenant": "p", "operation": "enhance", "items": persons}),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["status"], json!(202));
    assert_eq!(answer["admitted_items"], json!(3));
    assert_eq!(
        answer["meta"],
        json!({"requested": 10, "processed": 3, "imports_charged": 3, "imports_remaining": 0, "partial": true,
               "partial_reason": "Only 3 credits remaining, but 10 persons requested"})
    );
}

#[test]
fn http_bad_input_gets_a_status_a_stable_code_and_moves_nothing() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 5, "g1");
    let raw = |path: &str, body: &str| server.call("POST", path, Some(body));
    let grants = "/v1/tenants/acme/grants";
    let cases: Vec<((u16, Value), u16, &str)> = vec![
        (raw("/v1/authorize", "{not json"), 400, "invalid_json"),
        (
            raw("/v1/authorize", r#"{"operation": "person.enrich"}"#),
            400,
            "invalid_request",
        ),
        (
            raw(
                "/v1/authorize",
                r#"{"tenant": "acme", "operation": "person.enrich", "items": "x"}"#,
            ),
            400,
            "invalid_request",
        ),
        (
            raw(
                "/v1/authorize",
                r#"{"tenant": "acme", "operation": "person.enrich", "body_base64": "%%%"}"#,
            ),
            400,
            "invalid_request",
        ),
        (
            raw(
                grants,
                r#"{"grant_id": "g2", "balance": "export", "amount": 5}"#,
            ),
            400,
            "unknown_balance",
        ),
        (
            raw(
                grants,
                r#"{"grant_id": "g3", "balance": "default", "amount": 0}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            raw(
                grants,
                r#"{"grant_id": "g4", "balance": "default", "amount": -3}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            raw(
                grants,
                r#"{"grant_id": "g5", "balance": "default", "amount": 9223372036854775808}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            raw(
                grants,
                r#"{"grant_id": "g6", "balance": "default", "amount": 1.5}"#,
            ),
            400,
            "invalid_amount",
        ),
        (
            raw(
                "/v1/settle",
                r#"{"transaction_id": "never", "status": 200}"#,
            ),
            404,
            "unknown_transaction",
        ),
        (server.get("/v1/nowhere"), 404, "not_found"),
        // Every body is an object: serde alone would read a struct from an array of its
        // fields in order (schemathesis found `[]` taken as empty thresholds).
        (
            raw("/v1/settle", r#"["never", 200]"#),
            400,
            "invalid_request",
        ),
        (
            server.call(
                "PUT",
                "/v1/tenants/acme/balances/default/thresholds",
                Some("[]"),
            ),
            400,
            "invalid_request",
        ),
        (raw("/v1/authorize", " [1,"), 400, "invalid_json"),
    ];
    for ((status, body), expected_status, expected_code) in cases {
        assert_eq!(
            (status, error_code(&body)),
            (expected_status, expected_code),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    assert_eq!(server.balances("acme")["balances"], json!({"default": 5}));
    assert_eq!(server.balances("acme")["held"], json!({"default": 0}));
}

#[test]
fn http_a_body_over_the_cap_is_refused_413_before_it_is_read() {
    use std::io::{Read, Write};
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let declared = 3 << 20;
    write!(
        stream,
        "POST /v1/authorize HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn http_admin_calls_need_the_token_when_one_is_set() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, Some("s3cret"));
    let anonymous = server.with_token(None);
    let (status, body) = anonymous.post(
        "/v1/tenants/acme/grants",
        json!({"grant_id": "g", "balance": "default", "amount": 5}),
    );
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let wrong = server.with_token(Some("guess"));
    assert_eq!(
        wrong
            .post(
                "/v1/tenants/acme/grants",
                json!({"grant_id": "g", "balance": "default", "amount": 5})
            )
            .0,
        401
    );
    assert_eq!(server.balances("acme")["balances"], json!({"default": 0}));
    server.grant("acme", "default", 5, "g");
    assert_eq!(server.balances("acme")["balances"], json!({"default": 5}));
}

#[test]
fn serve_refuses_a_non_loopback_address_without_an_admin_token() {
    let (_dir, db) = ledger();
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "0.0.0.0:0", "--db"])
        .arg(&db)
        .arg("--policy")
        .arg(component_path("smarte"))
        .env_remove("CREDITGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without --admin-token"), "{stderr}");
}

#[test]
fn http_policy_trap_is_a_5xx_with_a_stable_code_and_the_server_keeps_serving() {
    let (_dir, db) = ledger();
    let server = Server::start("misbehaving", &db, None);
    server.grant("acme", "default", 5, "g");
    let (status, body) = server.post(
        "/v1/authorize",
        json!({"tenant": "acme", "operation": "trap"}),
    );
    assert_eq!((status, error_code(&body)), (500, "policy_trap"));
    let (status, body) = server.post(
        "/v1/authorize",
        json!({"tenant": "acme", "operation": "spin"}),
    );
    assert_eq!((status, error_code(&body)), (500, "policy_fuel_exhausted"));
    assert_eq!(server.get("/healthz").0, 200);
    let (status, answer) = server.post(
        "/v1/authorize",
        json!({"tenant": "acme", "operation": "flat"}),
    );
    assert_eq!((status, &answer["admitted"]), (200, &json!(true)));
    assert_eq!(server.balances("acme")["balances"], json!({"default": 4}));
}

#[test]
fn acknowledged_charges_holds_and_journal_survive_kill_9() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 100, "g");
    for index in 0..20 {
        let id = format!("t{index}");
        let (status, _) = server.post("/v1/authorize", json!({"transaction_id": id, "tenant": "acme", "operation": "person.enrich", "items": ["a", "b"]}));
        assert_eq!(status, 200);
        if index % 2 == 0 {
            let (status, _) = server.post(
                "/v1/settle",
                json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}}),
            );
            assert_eq!(status, 200);
        }
    }
    let before = server.balances("acme");
    assert_eq!(before["balances"], json!({"default": 70}));
    assert_eq!(before["held"], json!({"default": 20}));
    let (_, audit_before) = server.get("/v1/transactions/t4");
    server.kill();

    let server = Server::start("smarte", &db, None);
    assert_eq!(server.balances("acme"), before);
    assert_eq!(server.get("/v1/transactions/t4").1, audit_before);
    let (status, receipt) = server.post(
        "/v1/settle",
        json!({"transaction_id": "t1", "status": 200, "attributes": {"records": "2"}}),
    );
    assert_eq!(status, 200);
    assert_eq!(receipt["charged"], json!({"default": 2}));
    let output = Command::new(BINARY)
        .args(["ledger", "--db"])
        .arg(&db)
        .arg("acme")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("every account equals the sum of its entries")
    );
}

#[test]
fn operator_commands_work_on_the_ledger_beside_a_running_server() {
    let (_dir, db) = ledger();
    let server = Server::start("donoratlas", &db, None);
    let run = |args: &[&str]| {
        let output = Command::new(BINARY)
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["grant", "partner", "export", "4", "--grant-id", "ops-1"]);
    run(&["grant", "partner", "export", "4", "--grant-id", "ops-1"]);
    assert_eq!(
        server.balances("partner")["balances"],
        json!({"enhancement": 0, "export": 4})
    );
    let (_, answer) = server.post(
        "/v1/authorize",
        json!({"tenant": "partner", "operation": "export", "items": ["d1"]}),
    );
    assert_eq!(answer["charged"], json!({"export": 1}));
    assert!(run(&["balance", "partner"]).contains("partner export: 3 available, 0 held"));
    let journal = run(&["ledger", "partner"]);
    assert!(
        journal.contains("grant") && journal.contains("charge"),
        "{journal}"
    );
    let bad = Command::new(BINARY)
        .args(["grant", "partner", "nope", "4", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not one of this policy's balances"));
}

/// Runs an operator command on the ledger at `db`; its standard output and whether it succeeded.
fn operator(db: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(BINARY)
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    let text = if output.status.success() {
        &output.stdout
    } else {
        &output.stderr
    };
    (
        output.status.success(),
        String::from_utf8_lossy(text).into_owned(),
    )
}

#[test]
fn operator_commands_never_register_or_activate_a_policy() {
    let (_dir, db) = ledger();
    let server = Server::start("donoratlas", &db, None);
    server.grant("partner", "export", 5, "g0");
    let policy = |server: &Server| server.get("/v1/policy").1;
    let before = policy(&server);
    assert_eq!(
        before["history"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );

    // Operator commands cannot be given a module to load.
    let smarte = component_path("smarte");
    let (succeeded, error) = operator(
        &db,
        &[
            "grant",
            "partner",
            "export",
            "1",
            "--policy",
            smarte.to_str().unwrap(),
        ],
    );
    assert!(!succeeded && error.contains("--policy"), "{error}");

    // Beside the running server, and then alone on its ledger once it is gone.
    let commands = |grant_id: &str| {
        for args in [
            &["grant", "partner", "export", "1", "--grant-id", grant_id][..],
            &["balance", "partner"],
            &["ledger", "partner"],
        ] {
            let (succeeded, output) = operator(&db, args);
            assert!(succeeded, "{args:?}: {output}");
        }
    };
    commands("ops-beside");
    assert_eq!(policy(&server)["history"], before["history"]);
    server.kill();
    commands("ops-alone");

    let server = Server::start_with(None, &db, None);
    let after = policy(&server);
    assert_eq!(after["history"], before["history"]);
    assert_eq!(after["active"], before["active"]);
    assert_eq!(server.balances("partner")["balances"]["export"], json!(7));
}

#[test]
fn http_put_policy_activates_a_checked_module_and_rollback_returns() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 10, "g");
    let (_, first) = server.post("/v1/authorize", json!({"transaction_id": "t1", "tenant": "acme", "operation": "person.enrich", "items": ["a", "b"]}));
    let smarte_digest = first["policy"]["digest"].clone();

    let (status, body) = server.put_bytes("/v1/policy", &component("misbehaving"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["active"]["name"], &body["active"]["contract"]),
        (&json!("misbehaving"), &json!("0.2.0"))
    );
    let (_, second) = server.post(
        "/v1/authorize",
        json!({"transaction_id": "t2", "tenant": "acme", "operation": "person.enrich"}),
    );
    assert_eq!(second["policy"]["name"], json!("misbehaving"));
    let (_, receipt) = server.post(
        "/v1/settle",
        json!({"transaction_id": "t1", "status": 200, "attributes": {"records": "1"}}),
    );
    assert_eq!(
        (&receipt["policy"]["digest"], &receipt["charged"]),
        (&smarte_digest, &json!({"default": 1}))
    );

    for (module, reason) in [
        (b"garbage".to_vec(), "not a valid WebAssembly component"),
        (component("nondeterministic"), "contract/deterministic"),
    ] {
        let (status, body) = server.put_bytes("/v1/policy", &module);
        assert_eq!(
            (status, error_code(&body)),
            (422, "invalid_policy"),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(reason),
            "{body}"
        );
    }
    let (status, body) = server.post("/v1/policy/rollback", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"]["digest"], smarte_digest);
    let (_, shown) = server.get("/v1/policy");
    let vias: Vec<String> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}/{}",
                a["name"].as_str().unwrap(),
                a["via"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        vias,
        ["smarte/rollback", "misbehaving/http", "smarte/start"]
    );
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn http_policy_changes_need_the_admin_token() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, Some("s3cret"));
    let anonymous = server.with_token(None);
    assert_eq!(
        anonymous
            .put_bytes("/v1/policy", &component("donoratlas"))
            .0,
        401
    );
    assert_eq!(anonymous.post("/v1/policy/rollback", json!({})).0, 401);
    assert_eq!(
        anonymous.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );
    assert_eq!(
        server.put_bytes("/v1/policy", &component("donoratlas")).0,
        200
    );
}

/// Pinning: `If-Match: "sha256:HEX"` (what `creditgate policy activate --sha256` sends)
/// activates only the module with that digest; another is refused with 412 before
/// anything compiles, and an `If-Match` that names no digest with 400.
#[test]
fn a_pinned_activation_takes_only_the_module_with_that_digest() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    let digest_of = |name: &str| creditgate::policy::PolicyDigest::of(&component(name)).to_string();
    let activate = |name: &str, pinned: &str| {
        Command::new(BINARY)
            .args([
                "policy",
                "activate",
                "--server",
                &server.base,
                "--sha256",
                pinned,
            ])
            .arg(component_path(name))
            .output()
            .unwrap()
    };
    let refused = activate("donoratlas", &digest_of("smarte"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("412 digest_mismatch"), "{stderr}");
    assert!(stderr.contains(&digest_of("donoratlas")), "{stderr}");
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );

    let put = |mode: &str, if_match: &str| {
        let response = ureq::put(&format!("{}/v1/policy{mode}", server.base))
            .set("if-match", if_match)
            .send_bytes(&component("donoratlas"));
        let response = match response {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("PUT /v1/policy: {error}"),
        };
        (
            response.status(),
            response.into_json::<Value>().unwrap_or(Value::Null),
        )
    };
    for bad in [
        "sha256:zz",
        "md5:abc",
        &format!("\"{}\"", digest_of("donoratlas")),
    ] {
        let (status, body) = put("", bad);
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_request"),
            "{bad}: {body}"
        );
    }
    let (status, body) = put(
        "?mode=shadow",
        &format!("\"sha256:{}\"", digest_of("smarte")),
    );
    assert_eq!(
        (status, error_code(&body)),
        (412, "digest_mismatch"),
        "{body}"
    );
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );

    let accepted = activate("donoratlas", &digest_of("donoratlas").to_uppercase());
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("donoratlas")
    );
    let (status, body) = put("", "*");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn http_a_restart_resumes_the_last_policy_and_settles_open_holds_on_their_version() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 10, "g");
    let (_, held) = server.post("/v1/authorize", json!({"transaction_id": "t1", "tenant": "acme", "operation": "person.enrich", "items": ["a", "b"]}));
    let output = Command::new(BINARY)
        .args(["policy", "activate", "--server", &server.base])
        .arg(component_path("misbehaving"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("misbehaving"));
    server.kill();

    let server = Server::start_with(None, &db, None);
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("misbehaving")
    );
    assert_eq!(server.balances("acme")["held"], json!({"default": 2}));
    let (status, receipt) = server.post(
        "/v1/settle",
        json!({"transaction_id": "t1", "status": 200, "attributes": {"records": "2"}}),
    );
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["policy"]["digest"], held["policy"]["digest"]);
    assert_eq!(receipt["charged"], json!({"default": 2}));
    assert_eq!(receipt["headers"]["credits-deducted"], json!("2"));
}

#[test]
fn serve_watch_activates_the_policy_file_when_it_changes_and_keeps_it_when_refused() {
    let (dir, db) = ledger();
    let policy = dir.path().join("policy.wasm");
    std::fs::write(&policy, component("smarte")).unwrap();
    let mut child = Command::new(BINARY)
        .args(["serve", "--watch", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .arg("--policy")
        .arg(&policy)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut banner,
    )
    .unwrap();
    let base = banner
        .trim()
        .trim_start_matches("creditgate listening on ")
        .to_owned();
    let active = || -> String {
        let body: Value = ureq::get(&format!("{base}/v1/policy"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        body["active"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let wait_for = |name: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while active() != name && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        active()
    };
    assert_eq!(active(), "smarte");
    std::fs::write(&policy, component("donoratlas")).unwrap();
    assert_eq!(wait_for("donoratlas"), "donoratlas");
    std::fs::write(&policy, b"not a component").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        active(),
        "donoratlas",
        "a refused file must leave the active policy"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn http_shadow_mode_reports_differences_and_promotes() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 10, "g");
    assert_eq!(error_code(&server.get("/v1/policy/shadow").1), "no_shadow");
    let (status, body) = server.put_bytes("/v1/policy?mode=shadow", &component("pricier_funding"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["active"]["name"], &body["shadow"]["version"]),
        (&json!("smarte"), &json!("1.1.0-funding"))
    );
    assert_eq!(
        server
            .put_bytes("/v1/policy?mode=sideways", &component("smarte"))
            .0,
        400
    );
    server.post("/v1/authorize", json!({"transaction_id": "f1", "tenant": "acme", "operation": "funding.enrich", "items": ["a"]}));
    server.post(
        "/v1/settle",
        json!({"transaction_id": "f1", "status": 200, "attributes": {"records": "1"}}),
    );
    let (status, report) = server.get("/v1/policy/shadow");
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            report["authorize_differences"].as_u64(),
            report["settle_differences"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(report["settle_charge_delta"], json!({"default": 1}));
    assert_eq!(server.balances("acme")["balances"], json!({"default": 9}));
    let (status, promoted) = server.post("/v1/policy/shadow/promote", json!({}));
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["active"]["version"], json!("1.1.0-funding"));
    assert_eq!(
        server.get("/v1/policy").1["history"][0]["via"],
        json!("shadow-promotion")
    );
}

#[test]
fn serve_refuses_a_batch_wait_beyond_its_bound() {
    let (_dir, db) = ledger();
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--batch-wait-us-max",
            "100001",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("100001 is not in 0..=100000"), "{stderr}");
}

#[test]
fn serve_bounds_its_batches_as_told_and_reports_them() {
    let (_dir, db) = ledger();
    let server = Server::start_with_args(
        Some("smarte"),
        &db,
        None,
        &["--batch-size-max", "4", "--batch-wait-us-max", "100000"],
    );
    server.grant("acme", "default", 100, "welcome");
    let start = std::sync::Arc::new(std::sync::Barrier::new(16));
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let (server, start) = (server.with_token(None), std::sync::Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                server.post(
                    "/v1/authorize",
                    json!({"transaction_id": format!("t{client}"), "tenant": "acme",
                           "operation": "person.enrich", "items": ["a"]}),
                )
            })
        })
        .collect();
    for client in clients {
        let (status, answer) = client.join().unwrap();
        assert_eq!(
            (status, &answer["admitted"]),
            (200, &json!(true)),
            "{answer}"
        );
    }
    let (status, health) = server.get("/healthz");
    assert_eq!(status, 200);
    let stats = &health["batches"];
    let count = |name: &str| stats[name].as_u64().unwrap_or_default();
    assert!(count("largest_batch") <= 4, "{stats}");
    assert!(count("decisions") >= 17, "{stats}");
    assert!(
        (5..=14).contains(&count("batches")),
        "17 decisions in {} batches: {stats}",
        count("batches")
    );
}
