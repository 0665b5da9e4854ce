//! Signed modules (docs/policy-authors.md, section 6): `creditgate policy keygen` and
//! `policy sign`, and a `creditgate serve --trusted-key` that activates (or shadows) a
//! new module only with a signature of its sha256 by a trusted key, on every path: `PUT
//! /v1/policy`, `policy activate` (the `.sig` beside the file), `--policy` at start and
//! `--watch`. Refusals move nothing; a module the ledger holds (rollback, a settle on
//! an older version, a restart) is not checked again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{BINARY, Server, answer_of, component, component_path};

/// `creditgate ARGS...`, asserting it succeeds; its stdout.
fn creditgate(args: &[&std::ffi::OsStr]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "creditgate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("CREDITGATE_ADMIN_TOKEN")
        .output()
        .expect("run creditgate")
}

/// `policy keygen --out DIR/NAME`: the secret and public key files.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    creditgate(&[
        "policy".as_ref(),
        "keygen".as_ref(),
        "--out".as_ref(),
        prefix.as_ref(),
    ]);
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// `policy sign FILE --key KEY`: the signature it wrote beside the file.
fn sign(file: &Path, key: &Path) -> String {
    creditgate(&[
        "policy".as_ref(),
        "sign".as_ref(),
        file.as_ref(),
        "--key".as_ref(),
        key.as_ref(),
    ]);
    let mut sig = file.as_os_str().to_owned();
    sig.push(".sig");
    std::fs::read_to_string(PathBuf::from(sig))
        .expect("the .sig beside the module")
        .trim()
        .to_owned()
}

/// A copy of a built component in `dir` (so its `.sig` lands there).
fn copy_of(name: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::copy(component_path(name), &path).expect("copy the component");
    path
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// `PUT /v1/policy{query}` with the bytes and, when given, a `creditgate-signature`.
fn put(server: &Server, query: &str, bytes: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut request = ureq::put(&format!("{}/v1/policy{query}", server.base));
    if let Some(signature) = signature {
        request = request.set("creditgate-signature", signature);
    }
    answer_of(request.send_bytes(bytes)).expect("an answer")
}

/// The active policy's digest and the number of activations in the history.
fn policy_state(server: &Server) -> (String, usize) {
    let (status, body) = server.get("/v1/policy");
    assert_eq!(status, 200, "{body}");
    (
        body["active"]["digest"].as_str().unwrap_or("").to_owned(),
        body["history"].as_array().map_or(0, Vec::len),
    )
}

fn digest(bytes: &[u8]) -> String {
    creditgate::policy::PolicyDigest::of(bytes).to_string()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

#[test]
fn with_a_trusted_key_only_a_module_it_signed_activates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(dir.path(), "ops");
    let (other_key, _) = keygen(dir.path(), "other");
    let secret = std::fs::read_to_string(&key).expect("the secret key");
    assert!(is_hex(secret.trim(), 64), "{secret}");
    assert!(is_hex(std::fs::read_to_string(&public).unwrap().trim(), 64));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    let again = run(&[
        "policy".as_ref(),
        "keygen".as_ref(),
        "--out".as_ref(),
        dir.path().join("ops").as_ref(),
    ]);
    assert!(!again.status.success(), "keygen overwrote a key");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);

    let smarte = copy_of("smarte", dir.path());
    let donoratlas = copy_of("donoratlas", dir.path());
    sign(&smarte, &key);
    let signature = sign(&donoratlas, &key);
    assert!(is_hex(&signature, 128), "{signature}");
    let by_other = {
        let elsewhere = tempfile::tempdir().expect("temp dir");
        sign(&copy_of("donoratlas", elsewhere.path()), &other_key)
    };
    let bytes = component("donoratlas");
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;

    let db = dir.path().join("ledger.db");
    let server = Server::start_with_args(
        None,
        &db,
        None,
        &["--policy", text(&smarte), "--trusted-key", text(&public)],
    );
    let started = policy_state(&server);
    assert_eq!(started.0, digest(&component("smarte")));
    server.grant("acme", "default", 10, "welcome");
    let (status, body) = server.post(
        "/v1/authorize",
        json!({"transaction_id": "t1", "tenant": "acme", "operation": "person.enrich", "items": ["jane@example.com"]}),
    );
    assert_eq!(status, 200, "{body}");

    for (query, bytes, signature, code) in [
        ("", &bytes, None, "signature_required"),
        ("?mode=shadow", &bytes, None, "signature_required"),
        ("", &bytes, Some(by_other.as_str()), "signature_invalid"),
        ("", &tampered, Some(signature.as_str()), "signature_invalid"),
        (
            "?mode=shadow",
            &tampered,
            Some(signature.as_str()),
            "signature_invalid",
        ),
        ("", &bytes, Some(&signature[..126]), "signature_invalid"),
        ("", &bytes, Some("not a signature"), "signature_invalid"),
    ] {
        let (status, body) = put(&server, query, bytes, signature);
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap_or("")),
            (403, code),
            "{query} {signature:?}: {body}"
        );
        assert_eq!(policy_state(&server), started, "a refusal moved the policy");
        assert_eq!(server.get("/v1/policy/shadow").0, 404, "a refusal shadowed");
    }
    let unsigned = dir.path().join("unsigned.wasm");
    std::fs::write(&unsigned, &bytes).unwrap();
    let refused = run(&[
        "policy".as_ref(),
        "activate".as_ref(),
        "--server".as_ref(),
        server.base.as_ref(),
        unsigned.as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("403 signature_required"), "{stderr}");
    assert_eq!(policy_state(&server), started);

    // Signed: shadowed, then promoted without another check.
    let (status, body) = put(&server, "?mode=shadow", &bytes, Some(&signature));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/v1/policy/shadow/promote", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"]["name"], json!("donoratlas"));
    // A settle on the version that authorized it, and a rollback, take modules the
    // ledger holds: checked when they were first activated.
    let (status, receipt) = server.post(
        "/v1/settle",
        json!({"transaction_id": "t1", "status": 200, "attributes": {"records": "1"}}),
    );
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["policy"]["name"], json!("smarte"), "{receipt}");
    let (status, body) = server.post("/v1/policy/rollback", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"]["name"], json!("smarte"));

    // The CLI sends the .sig beside the file.
    let stdout = creditgate(&[
        "policy".as_ref(),
        "activate".as_ref(),
        "--server".as_ref(),
        server.base.as_ref(),
        donoratlas.as_ref(),
    ]);
    assert!(stdout.contains("donoratlas"), "{stdout}");
    assert_eq!(policy_state(&server).0, digest(&bytes));
}

/// What `serve --db DB ARGS` said on stderr as it refused to start; a failure if it
/// listened.
fn refused_start(db: &Path, args: &[&str]) -> String {
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--db", text(db)])
        .args(args)
        .env_remove("CREDITGATE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn creditgate serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).expect("banner");
    if !first_line.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve {args:?} started: {first_line}");
    }
    let output = child.wait_with_output().expect("wait for serve");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_starts_on_a_policy_file_only_with_a_trusted_signature_beside_it_and_watches_it_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(dir.path(), "ops");
    let (other_key, _) = keygen(dir.path(), "other");
    let policy = copy_of("smarte", dir.path());
    let db = dir.path().join("ledger.db");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--trusted-key", text(&public)];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let with_policy = |extra: &[&str]| {
        let mut all = vec!["--policy", text(&policy)];
        all.extend_from_slice(extra);
        args(&all)
    };

    let refused = refused_start(&db, &strs(&with_policy(&[])));
    assert!(refused.contains("without a signature"), "{refused}");
    sign(&policy, &other_key);
    let refused = refused_start(&db, &strs(&with_policy(&[])));
    assert!(
        refused.contains("not a signature of these bytes by a trusted key"),
        "{refused}"
    );

    sign(&policy, &key);
    let server = Server::start_with_args(None, &db, None, &strs(&with_policy(&["--watch"])));
    let started = policy_state(&server);
    assert_eq!(started.0, digest(&component("smarte")));

    // The watched file changes, its .sig still the old module's: refused, and tried
    // again once the new module is signed.
    std::fs::copy(component_path("donoratlas"), &policy).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        policy_state(&server),
        started,
        "the watch took an unsigned module"
    );
    sign(&policy, &key);
    let deadline = Instant::now() + Duration::from_secs(30);
    while policy_state(&server).0 != digest(&component("donoratlas")) {
        assert!(
            Instant::now() < deadline,
            "the watch never took the signed module"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);

    // A restart without --policy resumes the module the ledger holds, unchecked.
    let server = Server::start_with_args(None, &db, None, &strs(&args(&[])));
    assert_eq!(policy_state(&server).0, digest(&component("donoratlas")));
}
