//! Shared test helpers: locating the built components, and driving a meter through the
//! library ([`TestMeter`]) or over HTTP ([`HttpGate`]) behind one [`Gate`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use creditgate::clock::ManualClock;
use creditgate::meter::failure::FailurePolicy;
use creditgate::model::{
    Authorization, AuthorizeRequest, GrantRequest, Quote, Receipt, SettleRequest, TenantBalances,
    TransactionView,
};
use creditgate::policy::component::Limits;
use creditgate::store::scratch::{ScratchLedger, ScratchStore};
use creditgate::store::{self, LedgerReader, StoreLocation};
use creditgate::{Meter, MeterConfig, MeterError, PolicySource};
use serde_json::{Value, json};

/// The workspace's target directory (honouring CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The bytes of a policy component built by `cargo policies`.
pub fn component(name: &str) -> Vec<u8> {
    let path = target_dir().join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {}: {error}; build the policy components first with \
             `cargo policies && policy/build-guests`",
            path.display()
        )
    })
}

pub fn component_path(name: &str) -> PathBuf {
    target_dir().join(format!("wasm32-wasip2/release/{name}.wasm"))
}

/// The PostgreSQL database the tests make their scratch schemas in
/// (`CREDITGATE_TEST_POSTGRES`, by default the local `test` database).
pub fn postgres_store() -> ScratchStore {
    ScratchStore::Postgres(
        std::env::var("CREDITGATE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
    )
}

/// A meter on a fresh ledger (SQLite file or PostgreSQL schema) with a hand-driven clock.
pub struct TestMeter {
    pub meter: Meter,
    pub clock: ManualClock,
    pub scratch: ScratchLedger,
    /// The failure mode it opens (and reopens) with.
    pub failure: FailurePolicy,
}

pub const START_MS: u64 = 1_700_000_000_000;

impl TestMeter {
    pub fn location(&self) -> &StoreLocation {
        self.scratch.location()
    }

    /// On a fresh SQLite ledger.
    pub fn new(policy: &str) -> Self {
        Self::on(&ScratchStore::Sqlite, policy)
    }

    pub fn on(store: &ScratchStore, policy: &str) -> Self {
        Self::with_limits(store, policy, deterministic_limits())
    }

    /// On a fresh ledger, with these per-call bounds.
    pub fn with_limits(store: &ScratchStore, policy: &str, limits: Limits) -> Self {
        Self::open(store, policy, limits, FailurePolicy::default())
    }

    /// On a fresh ledger, with this failure mode.
    pub fn with_failure(store: &ScratchStore, policy: &str, failure: FailurePolicy) -> Self {
        Self::open(store, policy, deterministic_limits(), failure)
    }

    fn open(store: &ScratchStore, policy: &str, limits: Limits, failure: FailurePolicy) -> Self {
        let scratch = store.create().expect("fresh ledger");
        let clock = ManualClock::starting_at(START_MS);
        let meter = open_meter(&scratch, &clock, policy, limits, &failure);
        Self {
            meter,
            clock,
            scratch,
            failure,
        }
    }

    /// Closes the meter and opens the same ledger again, with `policy`.
    pub fn reopen(self, policy: &str) -> Self {
        let Self {
            meter,
            clock,
            scratch,
            failure,
        } = self;
        drop(meter);
        let meter = open_meter(&scratch, &clock, policy, deterministic_limits(), &failure);
        Self {
            meter,
            clock,
            scratch,
            failure,
        }
    }
}

impl Gate for TestMeter {
    fn grant(&self, tenant: &str, balance: &str, amount: i64) {
        self.meter
            .grant(GrantRequest {
                grant_id: format!("grant-{}", uuid()),
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                amount,
                terms: Default::default(),
            })
            .expect("grant");
    }

    fn try_authorize(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
        attributes: &[(&str, &str)],
    ) -> Result<Authorization, Failure> {
        Ok(self
            .meter
            .authorize(authorize_request(id, tenant, operation, items, attributes))?)
    }

    fn try_quote(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
    ) -> Result<Quote, Failure> {
        Ok(self
            .meter
            .quote(authorize_request(id, tenant, operation, items, &[]))?)
    }

    fn try_settle(
        &self,
        id: &str,
        status: u16,
        attributes: &[(&str, &str)],
    ) -> Result<Receipt, Failure> {
        Ok(self.meter.settle(SettleRequest {
            transaction_id: id.to_owned(),
            status,
            attributes: pairs(attributes),
            body: None,
        })?)
    }

    fn balances(&self, tenant: &str) -> TenantBalances {
        self.meter.balances(tenant).expect("balances")
    }

    fn transaction(&self, id: &str) -> Result<TransactionView, Failure> {
        Ok(self.meter.transaction(id)?)
    }

    fn assert_sound(&self) {
        let violations = self.meter.invariant_violations().expect("invariant check");
        assert!(
            violations.is_empty(),
            "ledger invariants broke: {violations:#?}"
        );
    }
}

/// The body of an authorize (and of a quote).
fn authorize_request(
    id: &str,
    tenant: &str,
    operation: &str,
    items: &[&str],
    attributes: &[(&str, &str)],
) -> AuthorizeRequest {
    AuthorizeRequest {
        transaction_id: Some(id.to_owned()),
        tenant: tenant.to_owned(),
        operation: operation.to_owned(),
        items: items.iter().map(|item| (*item).to_owned()).collect(),
        attributes: pairs(attributes),
        body: None,
    }
}

/// The default bounds, but a wall-clock bound no call reaches on a loaded machine
/// before its fuel runs out: the tests see the deterministic outcome (fuel), and the
/// tests of the wall bound set their own.
pub fn deterministic_limits() -> Limits {
    Limits {
        wall_ms_per_call: 5_000,
        ..Limits::default()
    }
}

fn open_meter(
    scratch: &ScratchLedger,
    clock: &ManualClock,
    policy: &str,
    limits: Limits,
    failure: &FailurePolicy,
) -> Meter {
    let mut config = MeterConfig::new(scratch.location().clone());
    config.clock = std::sync::Arc::new(clock.clone());
    config.limits = limits;
    config.failure = failure.clone();
    config.sweep_interval_ms = 0;
    Meter::open(config, PolicySource::Component(component(policy))).expect("open meter")
}

pub fn pairs(attributes: &[(&str, &str)]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

pub fn amounts(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
    entries
        .iter()
        .map(|(balance, amount)| ((*balance).to_owned(), *amount))
        .collect()
}

pub fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A refused call, through the library or over HTTP: its status and stable code.
#[derive(Debug)]
pub struct Failure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn code(&self) -> &str {
        &self.code
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl From<MeterError> for Failure {
    fn from(error: MeterError) -> Self {
        Self {
            status: error.status(),
            code: error.code().to_owned(),
            message: error.to_string(),
        }
    }
}

/// One way into a meter: the library or the HTTP sidecar. Rule tests run both ways.
pub trait Gate {
    fn grant(&self, tenant: &str, balance: &str, amount: i64);
    fn try_authorize(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
        attributes: &[(&str, &str)],
    ) -> Result<Authorization, Failure>;
    /// What authorize would answer, with nothing recorded.
    fn try_quote(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
    ) -> Result<Quote, Failure>;
    fn try_settle(
        &self,
        id: &str,
        status: u16,
        attributes: &[(&str, &str)],
    ) -> Result<Receipt, Failure>;
    fn balances(&self, tenant: &str) -> TenantBalances;
    fn transaction(&self, id: &str) -> Result<TransactionView, Failure>;
    /// Every account equals the sum of its journal entries.
    fn assert_sound(&self);

    fn authorize(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
        attributes: &[(&str, &str)],
    ) -> Authorization {
        self.try_authorize(id, tenant, operation, items, attributes)
            .unwrap_or_else(|failure| panic!("authorize {id}: {failure}"))
    }

    fn settle(&self, id: &str, status: u16, attributes: &[(&str, &str)]) -> Receipt {
        self.try_settle(id, status, attributes)
            .unwrap_or_else(|failure| panic!("settle {id}: {failure}"))
    }

    fn available(&self, tenant: &str, balance: &str) -> i64 {
        self.balances(tenant).balances[balance]
    }

    fn held(&self, tenant: &str, balance: &str) -> i64 {
        self.balances(tenant).held[balance]
    }
}

/// Opens the ledger as an operator command does (nothing about policies recorded; a
/// SQLite ledger must be closed by its meter first) and checks its invariants.
pub fn assert_ledger_sound(db: &StoreLocation) {
    let violations = match db {
        StoreLocation::Postgres(url) => store::postgres::open_reader(url)
            .expect("open ledger")
            .invariant_violations(None),
        StoreLocation::Sqlite(_) => operator_meter(db).invariant_violations(),
    }
    .expect("invariant check");
    assert!(
        violations.is_empty(),
        "ledger invariants broke: {violations:#?}"
    );
}

/// A meter on an existing ledger, opened as operator commands open one.
pub fn operator_meter(db: &StoreLocation) -> Meter {
    let mut config = MeterConfig::new(db.clone());
    config.record_start = false;
    config.sweep_interval_ms = 0;
    Meter::open(config, PolicySource::Resume { fallback: None }).expect("open ledger")
}

/// Generates, for each rule `fn rule(meter: &dyn Gate)`, one test through the library
/// and one over HTTP against a `creditgate serve` process.
#[macro_export]
macro_rules! rules_both_ways {
    ($policy:literal: $($rule:ident),* $(,)?) => {
        mod library {
            $(#[test]
            fn $rule() {
                super::$rule(&$crate::support::TestMeter::new($policy));
            })*
        }
        mod http {
            $(#[test]
            fn $rule() {
                super::$rule(&$crate::support::HttpGate::start($policy));
            })*
        }
        mod postgres {
            $(#[test]
            fn $rule() {
                super::$rule(&$crate::support::TestMeter::on(
                    &$crate::support::postgres_store(),
                    $policy,
                ));
            })*
        }
    };
}

/// Generates, for each `fn test(store) { ... }`, a module of that name with one test
/// on a SQLite ledger and one on a PostgreSQL ledger; `store` is the
/// [`ScratchStore`] to make ledgers with.
#[macro_export]
macro_rules! on_both_stores {
    ($($(#[$attribute:meta])* fn $name:ident($store:ident) $body:block)*) => {
        $($(#[$attribute])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($store: &creditgate::store::scratch::ScratchStore) $body

            #[test]
            fn sqlite() {
                run(&creditgate::store::scratch::ScratchStore::Sqlite);
            }

            #[test]
            fn postgres() {
                run(&$crate::support::postgres_store());
            }
        })*
    };
}

pub const BINARY: &str = env!("CARGO_BIN_EXE_creditgate");

/// `serve`'s arguments: a loopback port of its choosing, the ledger, the policy and the
/// token when given, then `extra`.
fn serve_args(
    policy: Option<&str>,
    db: &std::ffi::OsStr,
    token: Option<&str>,
    extra: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["serve", "--listen", "127.0.0.1:0", "--db"]
        .iter()
        .map(Into::into)
        .collect();
    args.push(db.to_owned());
    args.extend(extra.iter().map(Into::into));
    // As in-process (`deterministic_limits`): tests see the fuel outcome, not whether a
    // loaded machine descheduled a call past the default wall-clock bound.
    if !extra.contains(&"--policy-wall-ms-per-call") {
        args.push("--policy-wall-ms-per-call".into());
        args.push(deterministic_limits().wall_ms_per_call.to_string().into());
    }
    if let Some(policy) = policy {
        args.push("--policy".into());
        args.push(component_path(policy).into_os_string());
    }
    if let Some(token) = token {
        args.push("--admin-token".into());
        args.push(token.into());
    }
    args
}

/// A call's status and JSON body (or its text, when not JSON), whatever the status;
/// `Err` when no answer came.
pub fn answer_of(result: Result<ureq::Response, ureq::Error>) -> Result<(u16, Value), String> {
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Err(error.to_string()),
    };
    let status = response.status();
    let text = response.into_string().map_err(|error| error.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// A running `creditgate serve`; killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub token: Option<String>,
}

impl Server {
    pub fn start(policy: &str, db: impl AsRef<std::ffi::OsStr>, token: Option<&str>) -> Self {
        Self::start_with(Some(policy), db, token)
    }

    /// Starts with `--policy` when given; without it, serve resumes the ledger's last policy.
    pub fn start_with(
        policy: Option<&str>,
        db: impl AsRef<std::ffi::OsStr>,
        token: Option<&str>,
    ) -> Self {
        Self::start_with_args(policy, db, token, &[])
    }

    /// As [`Server::start_with`], with more arguments for `serve`.
    pub fn start_with_args(
        policy: Option<&str>,
        db: impl AsRef<std::ffi::OsStr>,
        token: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let mut command = Command::new(BINARY);
        command.args(serve_args(policy, db.as_ref(), token, extra));
        Self::spawn(command, token)
    }

    /// As [`Server::start_with_args`], run by `sh` after `shell` (such as
    /// `ulimit -n 1024`); `sh` execs the server, which keeps its pid.
    pub fn start_in_shell(
        shell: &str,
        policy: Option<&str>,
        db: impl AsRef<std::ffi::OsStr>,
        token: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{shell} && exec \"$0\" \"$@\""))
            .arg(BINARY)
            .args(serve_args(policy, db.as_ref(), token, extra));
        Self::spawn(command, token)
    }

    fn spawn(mut command: Command, token: Option<&str>) -> Self {
        command
            .env_remove("CREDITGATE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn creditgate serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).expect("banner");
        // Keep reading, as a supervisor would, so the server never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let base = first_line
            .trim()
            .strip_prefix("creditgate listening on ")
            .unwrap_or_else(|| panic!("unexpected banner: {first_line:?}"))
            .to_owned();
        Self {
            child: Some(child),
            base,
            token: token.map(str::to_owned),
        }
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// The server process's id (none for a client made by [`Server::with_token`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits, at most `timeout`, for the server to exit; whether it
    /// exited successfully.
    pub fn terminate(mut self, timeout: std::time::Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        let deadline = std::time::Instant::now() + timeout;
        while signalled && std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// As [`Server::start_with_args`] with `--db` and `--cache-dir` only, but a server
    /// that exits before it listens is an `Err` with what it wrote to stderr (a start-up
    /// refusal to report), not a panic. Its stderr is passed on once it listens.
    pub fn try_start(
        policy: Option<&str>,
        db: &std::path::Path,
        cache_dir: &str,
    ) -> Result<Self, String> {
        let mut command = Command::new(BINARY);
        command
            .args(serve_args(
                policy,
                db.as_os_str(),
                None,
                &["--cache-dir", cache_dir],
            ))
            .env_remove("CREDITGATE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn creditgate serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).expect("banner");
        let Some(base) = first_line.trim().strip_prefix("creditgate listening on ") else {
            let mut said = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut said).expect("stderr");
            let status = child.wait().expect("wait for serve");
            return Err(format!("{status}: {first_line}{said}"));
        };
        let base = base.to_owned();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::stderr()));
        Ok(Self {
            child: Some(child),
            base,
            token: None,
        })
    }

    /// `creditgate proxy` with `routes` in front of `upstream`, on a fresh ledger `db`
    /// with `policy`: its sidecar API, and the proxy's address.
    pub fn start_proxy(
        policy: &str,
        db: &std::path::Path,
        routes: &std::path::Path,
        upstream: &str,
    ) -> (Self, String) {
        let mut command = Command::new(BINARY);
        command
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .arg("--routes")
            .arg(routes)
            .args(["--upstream", upstream, "--db"])
            .arg(db)
            .arg("--policy")
            .arg(component_path(policy))
            .arg("--policy-wall-ms-per-call")
            .arg(deterministic_limits().wall_ms_per_call.to_string())
            .env_remove("CREDITGATE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn creditgate proxy");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut banner = [String::new(), String::new()];
        for line in &mut banner {
            stdout.read_line(line).expect("banner");
        }
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let address_after = |line: &str, prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split([',', ' ', '\n']).next())
                .unwrap_or_else(|| panic!("unexpected banner: {banner:?}"))
                .to_owned()
        };
        let proxy = address_after(&banner[0], "creditgate proxy listening on ");
        let api = address_after(&banner[1], "sidecar API on ");
        (
            Self {
                child: Some(child),
                base: api,
                token: None,
            },
            proxy,
        )
    }

    /// A client of the same server presenting another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            child: None,
            base: self.base.clone(),
            token: token.map(str::to_owned),
        }
    }

    /// POSTs `body`; `Err` when no answer came (the server is down or gone): the
    /// caller may retry elsewhere.
    pub fn try_post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(60))
            .build();
        answer_of(
            agent
                .post(&format!("{}{path}", self.base))
                .set("content-type", "application/json")
                .send_string(&body.to_string()),
        )
    }

    /// Sends a request; returns the status and the JSON body, whatever the status.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut request = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        answer_of(match body {
            Some(body) => request
                .set("content-type", "application/json")
                .send_string(body),
            None => request.call(),
        })
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    /// PUTs raw bytes (a policy component).
    pub fn put_bytes(&self, path: &str, bytes: &[u8]) -> (u16, Value) {
        let mut request = ureq::put(&format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let response = match request.send_bytes(bytes) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("PUT {path}: {error}"),
        };
        let status = response.status();
        (status, response.into_json().unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(&body.to_string()))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    pub fn grant(&self, tenant: &str, balance: &str, amount: i64, grant_id: &str) {
        let (status, body) = self.post(
            &format!("/v1/tenants/{tenant}/grants"),
            json!({"grant_id": grant_id, "balance": balance, "amount": amount}),
        );
        assert_eq!(status, 200, "{body}");
    }

    pub fn balances(&self, tenant: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/tenants/{tenant}/balances"));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// An answer of 200 as `T`; any other as its status and code.
    fn typed<T: serde::de::DeserializeOwned>((status, body): (u16, Value)) -> Result<T, Failure> {
        if status == 200 {
            Ok(serde_json::from_value(body).expect("answer shape"))
        } else {
            Err(Failure {
                status,
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
    }

    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The HTTP sidecar as a [`Gate`], on a fresh ledger file.
pub struct HttpGate {
    pub server: Server,
    pub _dir: tempfile::TempDir,
}

impl HttpGate {
    pub fn start(policy: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start(policy, dir.path().join("ledger.db"), None);
        Self { server, _dir: dir }
    }
}

impl Gate for HttpGate {
    fn grant(&self, tenant: &str, balance: &str, amount: i64) {
        self.server
            .grant(tenant, balance, amount, &format!("grant-{}", uuid()));
    }

    fn try_authorize(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
        attributes: &[(&str, &str)],
    ) -> Result<Authorization, Failure> {
        Server::typed(self.server.post(
            "/v1/authorize",
            json!({"transaction_id": id, "tenant": tenant, "operation": operation, "items": items, "attributes": pairs(attributes)}),
        ))
    }

    fn try_quote(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
    ) -> Result<Quote, Failure> {
        Server::typed(self.server.post(
            "/v1/quote",
            json!({"transaction_id": id, "tenant": tenant, "operation": operation, "items": items}),
        ))
    }

    fn try_settle(
        &self,
        id: &str,
        status: u16,
        attributes: &[(&str, &str)],
    ) -> Result<Receipt, Failure> {
        Server::typed(self.server.post(
            "/v1/settle",
            json!({"transaction_id": id, "status": status, "attributes": pairs(attributes)}),
        ))
    }

    fn balances(&self, tenant: &str) -> TenantBalances {
        Server::typed(self.server.get(&format!("/v1/tenants/{tenant}/balances"))).expect("balances")
    }

    fn transaction(&self, id: &str) -> Result<TransactionView, Failure> {
        Server::typed(self.server.get(&format!("/v1/transactions/{id}")))
    }

    fn assert_sound(&self) {
        let (status, body) = self.server.get("/v1/audit");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["violations"], json!([]), "ledger invariants broke");
    }
}
