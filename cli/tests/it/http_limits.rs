//! The sidecar's bounds over real connections to a `creditgate serve` process: admin
//! calls refused before their bodies are read, uploads and requests in flight bounded,
//! slow and idle connections closed, and a graceful stop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, component};

fn ledger() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ledger.db");
    (dir, db)
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// An answer read off a raw connection.
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Reads one answer (its head, then a body of its Content-Length) off `stream`.
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).expect("an answer");
        assert_eq!(read, 1, "the connection closed after {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut answer = Answer {
        status,
        head,
        body: Value::Null,
    };
    let length: usize = answer
        .header("content-length")
        .map_or(0, |length| length.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    answer.body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    answer
}

/// Sends a whole request on a new connection and reads the answer.
fn exchange(server: &Server, head: &str, body: &[u8]) -> Answer {
    let mut stream = connect(server);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_answer(&mut stream)
}

/// The peak resident memory of process `pid` so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn http_wrong_token_uploads_are_refused_without_buffering_their_bodies() {
    const UPLOADS: usize = 16;
    const UPLOAD_BYTES: usize = 32 << 20;
    let (_dir, db) = ledger();
    let server = Arc::new(Server::start("smarte", &db, Some("s3cret")));
    assert_eq!(server.get("/healthz").0, 200);
    let pid = server.pid().unwrap();
    let peak_before_kib = peak_rss_kib(pid);
    let start = Arc::new(Barrier::new(UPLOADS));
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|_| {
            let (server, start) = (Arc::clone(&server), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut stream = connect(&server);
                start.wait();
                write!(
                    stream,
                    "PUT /v1/policy HTTP/1.1\r\nhost: creditgate\r\nauthorization: Bearer guess\r\ncontent-length: {UPLOAD_BYTES}\r\n\r\n"
                )
                .unwrap();
                // Send the body while reading the answer, as a client would that does not
                // wait for `100 Continue`; the server may close before it is all sent.
                let mut sender = stream.try_clone().unwrap();
                let sending = std::thread::spawn(move || {
                    let chunk = vec![0u8; 1 << 20];
                    for _ in 0..UPLOAD_BYTES / chunk.len() {
                        if sender.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                });
                let answer = read_answer(&mut stream);
                let _ = stream.shutdown(Shutdown::Both);
                sending.join().unwrap();
                answer
            })
        })
        .collect();
    for upload in uploads {
        let answer = upload.join().unwrap();
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthorized"),
            "{}",
            answer.head
        );
    }
    let growth_mib = peak_rss_kib(pid).saturating_sub(peak_before_kib) / 1024;
    assert!(
        growth_mib < 64,
        "16 refused 32 MiB uploads grew the server's peak RSS by {growth_mib} MiB: their bodies were buffered"
    );
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );
}

#[test]
fn http_every_admin_call_is_refused_before_its_body_is_read() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, Some("s3cret"));
    let admin_calls = [
        ("PUT", "/v1/policy"),
        ("PUT", "/v1/policy?mode=shadow"),
        ("POST", "/v1/policy/rollback"),
        ("POST", "/v1/policy/shadow/promote"),
        ("DELETE", "/v1/policy/shadow"),
        ("POST", "/v1/tenants/acme/grants"),
        ("GET", "/v1/audit"),
    ];
    let refused_credentials = [
        "",
        "authorization: Bearer guess\r\n",
        "authorization: Bearer s3cret-and-more\r\n",
        "authorization: Basic s3cret\r\n",
        "authorization: s3cret\r\n",
        "authorization: Bearers3cret\r\n",
    ];
    for (method, path) in admin_calls {
        for credentials in refused_credentials {
            // A client that sends `Expect: 100-continue` waits for the server's go-ahead
            // before its body: a 401 instead of `100 Continue` proves that none was read.
            let answer = exchange(
                &server,
                &format!(
                    "{method} {path} HTTP/1.1\r\nhost: creditgate\r\n{credentials}content-length: 1000\r\nexpect: 100-continue\r\n\r\n"
                ),
                b"",
            );
            assert_eq!(
                (answer.status, answer.code()),
                (401, "unauthorized"),
                "{method} {path} with {credentials:?}: {}",
                answer.head
            );
            assert!(
                !answer.body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()
            );
        }
    }
    assert_eq!(server.balances("acme")["balances"], json!({"default": 0}));
}

#[test]
fn http_a_client_still_sending_a_refused_upload_gets_the_401_not_a_reset() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, Some("s3cret"));
    // ureq sends the whole body before it reads the answer: more than the sockets
    // buffer, so the server must take the bytes (and drop them) for the 401 to arrive.
    let (status, body) = server
        .with_token(Some("guess"))
        .put_bytes("/v1/policy", &vec![0u8; 16 << 20]);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );
}

#[test]
fn http_the_bearer_scheme_is_accepted_in_any_case() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, Some("s3cret"));
    for (index, scheme) in ["bearer", "BEARER", "Bearer", "bEaReR"].iter().enumerate() {
        let body =
            json!({"grant_id": format!("g{index}"), "balance": "default", "amount": 1}).to_string();
        let answer = exchange(
            &server,
            &format!(
                "POST /v1/tenants/acme/grants HTTP/1.1\r\nhost: creditgate\r\nauthorization: {scheme} s3cret\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        );
        assert_eq!(answer.status, 200, "{scheme}: {}", answer.body);
    }
    let upload = component("donoratlas");
    let answer = exchange(
        &server,
        &format!(
            "PUT /v1/policy HTTP/1.1\r\nhost: creditgate\r\nauthorization: bearer s3cret\r\ncontent-length: {}\r\n\r\n",
            upload.len()
        ),
        &upload,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["active"]["name"], json!("donoratlas"));
}

/// Starts a request whose body the server is now waiting for: it announced
/// `Expect: 100-continue`, and the server answered `100 Continue` once its handler
/// began to read the body (past every bound before it).
fn begin_request(server: &Server, method: &str, path: &str, length: usize) -> TcpStream {
    let mut stream = connect(server);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: creditgate\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nexpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 100, "{}", answer.head);
    stream
}

#[test]
fn http_policy_uploads_beyond_the_bound_get_503_overloaded_with_retry_after() {
    let (_dir, db) = ledger();
    let server = Server::start_with_args(Some("smarte"), &db, None, &["--policy-uploads-max", "1"]);
    let upload = component("donoratlas");
    let put = |upload: &[u8]| {
        exchange(
            &server,
            &format!(
                "PUT /v1/policy HTTP/1.1\r\nhost: creditgate\r\ncontent-length: {}\r\n\r\n",
                upload.len()
            ),
            upload,
        )
    };
    let mut slow = begin_request(&server, "PUT", "/v1/policy", 7);
    let refused = put(&upload);
    assert_eq!(
        (refused.status, refused.code()),
        (503, "overloaded"),
        "{}",
        refused.body
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("upload")
    );
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );

    slow.write_all(b"garbage").unwrap();
    let answer = read_answer(&mut slow);
    assert_eq!(
        (answer.status, answer.code()),
        (422, "invalid_policy"),
        "{}",
        answer.body
    );
    let accepted = put(&upload);
    assert_eq!(
        accepted.status, 200,
        "the upload's permit must be free again: {}",
        accepted.body
    );
    assert_eq!(accepted.body["active"]["name"], json!("donoratlas"));
}

#[test]
fn http_requests_beyond_the_in_flight_bound_get_503_overloaded_and_healthz_metrics_and_the_document_still_answer()
 {
    let (_dir, db) = ledger();
    let server = Server::start_with_args(
        Some("smarte"),
        &db,
        None,
        &["--requests-in-flight-max", "2"],
    );
    server.grant("acme", "default", 10, "g");
    let body = json!({"transaction_id": "t1", "tenant": "acme", "operation": "person.enrich", "items": ["a"]}).to_string();
    let authorize = || {
        exchange(
            &server,
            &format!(
                "POST /v1/authorize HTTP/1.1\r\nhost: creditgate\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        )
    };
    let mut in_flight: Vec<TcpStream> = (0..2)
        .map(|_| begin_request(&server, "POST", "/v1/authorize", body.len()))
        .collect();
    let started = Instant::now();
    let refused = authorize();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a full sidecar must refuse at once, not queue"
    );
    assert_eq!(
        (refused.status, refused.code()),
        (503, "overloaded"),
        "{}",
        refused.body
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    for exempt in ["/healthz", "/metrics", "/openapi.json"] {
        assert_eq!(
            server.call("GET", exempt, None).0,
            200,
            "{exempt} is exempt from the bound"
        );
    }

    for stream in &mut in_flight {
        stream.write_all(body.as_bytes()).unwrap();
        let answer = read_answer(stream);
        assert_eq!(
            (answer.status, &answer.body["admitted"]),
            (200, &json!(true)),
            "{}",
            answer.body
        );
    }
    assert_eq!(authorize().status, 200);
    assert_eq!(server.balances("acme")["held"], json!({"default": 1}));
}

#[test]
fn http_a_body_slower_than_its_timeout_gets_408_and_moves_nothing() {
    let (_dir, db) = ledger();
    let server = Server::start_with_args(
        Some("smarte"),
        &db,
        None,
        &["--body-read-timeout-ms", "300"],
    );
    server.grant("acme", "default", 10, "g");
    for (method, path) in [("POST", "/v1/authorize"), ("PUT", "/v1/policy")] {
        let mut slow = begin_request(&server, method, path, 100);
        slow.write_all(b"{\"tenant\": \"acme\"").unwrap();
        let started = Instant::now();
        let answer = read_answer(&mut slow);
        assert_eq!(
            (answer.status, answer.code()),
            (408, "request_timeout"),
            "{}",
            answer.body
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(server.balances("acme")["balances"], json!({"default": 10}));
    assert_eq!(
        server.get("/v1/policy").1["active"]["name"],
        json!("smarte")
    );
}

#[test]
fn http_connections_holding_half_a_header_are_closed_and_real_clients_served() {
    const SLOW_CONNECTIONS: usize = 1_100;
    const HEADER_READ_TIMEOUT_MS: u64 = 1_000;
    // This process holds the slow connections; the server gets 1,024 files at most.
    let open_files_max = creditgate_http::server::raise_open_files_limit().unwrap();
    assert!(
        open_files_max > 1_200,
        "this test needs 1,200 open files; the limit is {open_files_max}"
    );
    let (_dir, db) = ledger();
    let server = Server::start_in_shell(
        "ulimit -n 1024",
        Some("smarte"),
        &db,
        None,
        &[
            "--header-read-timeout-ms",
            &HEADER_READ_TIMEOUT_MS.to_string(),
        ],
    );
    server.grant("acme", "default", 10, "g");
    let address = server.address().parse().unwrap();
    let mut slow: Vec<TcpStream> = (0..SLOW_CONNECTIONS)
        .map(|index| {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
                .unwrap_or_else(|error| panic!("slow connection {index}: {error}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
                .write_all(b"POST /v1/authorize HTTP/1.1\r\nhost: creditgate\r\ncontent-ty")
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(HEADER_READ_TIMEOUT_MS));

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let health = agent.get(&format!("{}/healthz", server.base)).call();
    assert_eq!(
        health.map(|answer| answer.status()).ok(),
        Some(200),
        "/healthz was not answered"
    );
    let authorized: Value = agent
        .post(&format!("{}/v1/authorize", server.base))
        .send_json(json!({"tenant": "acme", "operation": "person.enrich", "items": ["a"]}))
        .expect("authorize was not answered")
        .into_json()
        .unwrap();
    assert_eq!(authorized["admitted"], json!(true), "{authorized}");

    for (index, stream) in slow.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok(),
            "slow connection {index} was not closed by the server: {closed:?}"
        );
    }
}

#[test]
fn http_an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let (_dir, db) = ledger();
    let server = Server::start_with_args(
        Some("smarte"),
        &db,
        None,
        &["--header-read-timeout-ms", "500"],
    );
    let mut stream = connect(&server);
    let health = b"GET /healthz HTTP/1.1\r\nhost: creditgate\r\n\r\n";
    for _ in 0..3 {
        // Within the timeout the connection stays open for the next request, and each
        // answer starts the clock again.
        stream.write_all(health).unwrap();
        assert_eq!(read_answer(&mut stream).status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    let idle_since = Instant::now() - Duration::from_millis(300);
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).ok(), Some(0), "{rest:?}");
    let idle = idle_since.elapsed();
    assert!(
        (Duration::from_millis(450)..Duration::from_secs(3)).contains(&idle),
        "closed after {idle:?} idle"
    );
}

#[test]
fn http_a_stop_signal_lets_the_request_in_flight_finish() {
    let (_dir, db) = ledger();
    let server = Server::start("smarte", &db, None);
    server.grant("acme", "default", 10, "g");
    let body = json!({"transaction_id": "t1", "tenant": "acme", "operation": "person.enrich", "items": ["a"]}).to_string();
    let mut in_flight = begin_request(&server, "POST", "/v1/authorize", body.len());
    let finishing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        in_flight.write_all(body.as_bytes()).unwrap();
        read_answer(&mut in_flight)
    });
    let address = server.address().to_owned();
    assert!(
        server.terminate(Duration::from_secs(10)),
        "serve did not exit cleanly"
    );
    let answer = finishing.join().unwrap();
    assert_eq!(
        (answer.status, &answer.body["admitted"]),
        (200, &json!(true)),
        "{}",
        answer.body
    );
    assert!(
        TcpStream::connect(address).is_err(),
        "the listener must be closed"
    );
}
