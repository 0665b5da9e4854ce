//! `creditgate serve`: the HTTP sidecar.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::failure::FailureArgs;
use super::limits::PolicyLimitArgs;
use clap::builder::TypedValueParser;

use creditgate::error::MeterError;
use creditgate::policy::TrustedKeys;
use creditgate::store::StoreLocation;
use creditgate::webhooks::deliver::{Deliverer, DeliveryOptions};
use creditgate::{Meter, MeterConfig, PolicySource};
use creditgate_http::limits::ApiLimits;
use creditgate_http::server::{self, ConnectionLimits};
use creditgate_http::{AppState, router};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    #[command(flatten)]
    meter: MeterArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

/// How webhooks are delivered.
#[derive(Args)]
pub struct WebhookArgs {
    /// The wait after a failed delivery, in ms; it doubles with each further failure.
    #[arg(long, default_value_t = DeliveryOptions::default().retry_base_ms, value_parser = clap::value_parser!(u64).range(1..))]
    webhook_retry_base_ms: u64,
    /// The longest wait between two attempts at one event, in ms.
    #[arg(long, default_value_t = DeliveryOptions::default().retry_max_ms, value_parser = clap::value_parser!(u64).range(1..))]
    webhook_retry_max_ms: u64,
    /// The longest a receiver may take to answer a delivery, in ms.
    #[arg(long, default_value_t = DeliveryOptions::default().timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    webhook_timeout_ms: u64,
}

impl WebhookArgs {
    pub fn options(&self) -> DeliveryOptions {
        DeliveryOptions {
            retry_base_ms: self.webhook_retry_base_ms,
            retry_max_ms: self.webhook_retry_max_ms.max(self.webhook_retry_base_ms),
            timeout_ms: self.webhook_timeout_ms,
        }
    }
}

/// The meter's options: its policy and its ledger (`serve` and `proxy`).
#[derive(Args)]
pub struct MeterArgs {
    /// The policy component (.wasm). Default: the policy this ledger last ran, or else
    /// the SMARTe reference policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Activate the policy file again whenever it changes (requires --policy).
    #[arg(long, requires = "policy")]
    watch: bool,
    /// A public key (file from `policy keygen`) whose signature makes a module
    /// activatable; repeatable. With any, every new module needs a signature by one of
    /// them: the `creditgate-signature` header over HTTP, `FILE.sig` beside
    /// `--policy FILE` (also when it is watched).
    #[arg(long, value_name = "PUB_FILE")]
    trusted_key: Vec<PathBuf>,
    /// The ledger: a SQLite file (created if missing; `sqlite://PATH` also works), or
    /// `postgres://...` for a database several gateway processes share.
    #[arg(long, default_value = super::DEFAULT_DB)]
    pub db: StoreLocation,
    /// Where precompiled policy components are cached (default: the SQLite ledger
    /// file's name with `.cache`; none for PostgreSQL).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// This process's name among the replicas of a PostgreSQL ledger (its heartbeat row,
    /// `GET /v1/policy`; default PID@HOST). Every replica takes up an activation made
    /// through any other within a second.
    #[arg(long)]
    replica_name: Option<String>,
    /// Decisions committed together, at most (group commit).
    #[arg(long, default_value_t = MeterConfig::BATCH_SIZE_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size_max: u32,
    /// How long a batch may wait for more decisions, in µs (0: take what is queued;
    /// at most 100,000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MeterConfig::BATCH_WAIT_US_LIMIT))]
    batch_wait_us_max: u64,
    #[command(flatten)]
    policy_limits: PolicyLimitArgs,
    #[command(flatten)]
    failure: FailureArgs,
}

/// The HTTP server's options and bounds (`serve` and `proxy`).
#[derive(Args)]
pub struct HttpArgs {
    /// Token for admin calls (grants). Required on a non-loopback address.
    #[arg(long, env = "CREDITGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Connections open at once; more wait in the listen backlog. Lowered to the
    /// open-file limit (whose soft limit `serve` raises to the hard one) less 128.
    #[arg(long, default_value_t = ConnectionLimits::CONNECTIONS_MAX, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    connections_max: usize,
    /// How long a connection may take to send a complete request head, in ms, counted
    /// from accept or from the previous answer: also the idle keep-alive timeout.
    #[arg(long, default_value_t = ConnectionLimits::HEADER_READ_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_ms: u64,
    /// How long a request body may take to arrive, in ms; a slower one gets 408.
    #[arg(long, default_value_t = ApiLimits::BODY_READ_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout_ms: u64,
    /// Requests handled at once (`/healthz` aside); more get 503 `overloaded`.
    #[arg(long, default_value_t = ApiLimits::REQUESTS_IN_FLIGHT_MAX, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    requests_in_flight_max: usize,
    /// `PUT /v1/policy` uploads received and checked at once; more get 503 `overloaded`.
    #[arg(long, default_value_t = ApiLimits::POLICY_UPLOADS_MAX, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    policy_uploads_max: usize,
    /// The longest a read of the event feed waits for the next event, in ms (a longer
    /// `wait_ms` waits this long).
    #[arg(long, default_value_t = creditgate::meter::feed::EVENTS_WAIT_MS_MAX, value_parser = clap::value_parser!(u64).range(0..=creditgate::meter::feed::EVENTS_WAIT_MS_MAX))]
    events_wait_ms_max: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.http.check_token(args.listen)?;
    // Counting from the start: the policy registered and activated on opening.
    creditgate_http::metrics::exporter();
    let meter = args.meter.open()?;
    // Delivers while the sidecar serves; stopped (and joined) when `run` returns.
    let _deliverer = Deliverer::start(Arc::clone(&meter), args.webhooks.options())?;
    let connection_limits = args.http.connection_limits();
    let api_limits = args.http.api_limits();
    let runtime = runtime()?;
    runtime.block_on(async move {
        let listener = server::bind(args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        meter
            .announce(&format!("http://{address}"))
            .context("cannot record where the sidecar listens")?;
        print_banner(
            address,
            &meter,
            &args.meter.db.describe(),
            args.http.admin_token.is_some(),
        );
        let app = router(Arc::new(AppState::new(
            meter,
            args.http.admin_token,
            api_limits,
        )));
        server::serve(listener, app, connection_limits, shutdown_signal()).await;
        Ok(())
    })
}

/// The process's async runtime.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

impl MeterArgs {
    /// Opens the meter on the ledger, with the policy to start on (watched with
    /// `--watch`).
    pub fn open(&self) -> anyhow::Result<Arc<Meter>> {
        let trusted_keys = self.trusted_keys()?;
        let (source, name) = self.policy_to_start_with(!trusted_keys.is_empty())?;
        let mut config = MeterConfig::new(self.db.clone());
        config.trusted_keys = trusted_keys;
        config.limits = self.policy_limits.limits();
        config.failure = self.failure.policy();
        config.batch_size_max = self.batch_size_max as usize;
        config.batch_wait_us_max = self.batch_wait_us_max;
        if let Some(name) = &self.replica_name {
            config.replica_name = Some(name.clone());
        }
        config.compile_cache_dir = match (&self.cache_dir, &self.db) {
            (Some(dir), _) => Some(dir.clone()),
            (None, StoreLocation::Sqlite(path)) => Some(path.with_extension("cache")),
            (None, StoreLocation::Postgres(_)) => None,
        };
        let meter =
            Meter::open(config, source).with_context(|| format!("cannot start with {name}"))?;
        let meter = Arc::new(meter);
        if let (true, Some(path)) = (self.watch, &self.policy) {
            watch(Arc::clone(&meter), path.clone());
        }
        Ok(meter)
    }

    /// The keys of `--trusted-key`.
    fn trusted_keys(&self) -> anyhow::Result<TrustedKeys> {
        let texts = self
            .trusted_key
            .iter()
            .map(|path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the trusted key {}", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        TrustedKeys::parse(texts.iter().map(String::as_str)).with_context(|| {
            format!(
                "--trusted-key takes files written by `creditgate policy keygen` (PREFIX.pub): {}",
                self.trusted_key
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The policy to start on: `--policy` (with the `FILE.sig` beside it, when keys are
    /// trusted), else the one the ledger last ran (a restart resumes where it was), else
    /// the SMARTe reference policy. `Meter::open` puts a file given here through the
    /// signature check and the activation gate; a policy the ledger ran passed them when
    /// it was activated.
    fn policy_to_start_with(&self, signed: bool) -> anyhow::Result<(PolicySource, String)> {
        if let Some(path) = &self.policy {
            let component = super::read_policy(path)?;
            let name = format!("policy {}", path.display());
            return Ok(match super::policy::read_signature(path)? {
                Some(signature) if signed => (
                    PolicySource::Signed {
                        component,
                        signature,
                    },
                    name,
                ),
                None if signed => (
                    PolicySource::Component(component),
                    format!(
                        "{name} (no signature {} beside it)",
                        super::policy::signature_path(path).display()
                    ),
                ),
                _ => (PolicySource::Component(component), name),
            });
        }
        let fallback = PathBuf::from(super::DEFAULT_POLICY);
        let (fallback, why_not) = match super::read_policy(&fallback) {
            Ok(component) => (Some(component), String::new()),
            Err(error) => (None, format!(": {error:#}")),
        };
        Ok((
            PolicySource::Resume { fallback },
            format!(
                "the policy {} last ran, or {}{why_not}",
                self.db.describe(),
                super::DEFAULT_POLICY
            ),
        ))
    }
}

impl HttpArgs {
    /// Refuses a non-loopback address without an admin token.
    pub fn check_token(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if !listen.ip().is_loopback() && self.admin_token.is_none() {
            anyhow::bail!(
                "refusing to listen on {listen} without --admin-token: anyone on the network could grant credits"
            );
        }
        Ok(())
    }

    pub fn api_limits(&self) -> ApiLimits {
        ApiLimits {
            requests_in_flight_max: self.requests_in_flight_max,
            policy_uploads_max: self.policy_uploads_max,
            body_read_timeout_ms: self.body_read_timeout_ms,
            events_wait_ms_max: self.events_wait_ms_max,
        }
    }

    /// The connection bounds of the flags, with the connections lowered to fit the
    /// open-file limit once its soft limit is raised to the hard one.
    pub fn connection_limits(&self) -> ConnectionLimits {
        let asked = ConnectionLimits {
            connections_max: self.connections_max,
            header_read_timeout_ms: self.header_read_timeout_ms,
        };
        let open_files_max = match server::raise_open_files_limit() {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot read or raise the open-file limit");
                return asked;
            }
        };
        let fitted = asked.fitted_to(open_files_max);
        if fitted.connections_max < asked.connections_max {
            tracing::warn!(
                connections_max = fitted.connections_max,
                open_files_max,
                "--connections-max lowered to fit the open-file limit"
            );
        }
        fitted
    }
}

/// Says where the sidecar listens and how to try it. A closed stdout (a supervisor that
/// does not read it) must not take the server down, so write errors are ignored.
fn print_banner(address: SocketAddr, meter: &Meter, db: &str, has_token: bool) {
    use std::io::Write;
    let policy = meter.policy();
    let balance = policy.balances.first().map_or("default", String::as_str);
    let (operation, items) = if policy.name == "donoratlas" {
        ("enhance", r#"["p1","p2"]"#)
    } else {
        ("person.enrich", r#"["jane@example.com"]"#)
    };
    let auth = if has_token {
        " -H \"authorization: Bearer $CREDITGATE_ADMIN_TOKEN\""
    } else {
        ""
    };
    let banner = format!(
        "creditgate listening on http://{address}\n\
         policy {name} {version} (sha256 {digest}), contract {contract}, ledger {db}\n\
         try it:\n\
         \x20 curl -s -X POST http://{address}/v1/tenants/acme/grants{auth} -d '{{\"grant_id\":\"welcome\",\"balance\":\"{balance}\",\"amount\":10}}'\n\
         \x20 curl -s -X POST http://{address}/v1/authorize -d '{{\"transaction_id\":\"demo-1\",\"tenant\":\"acme\",\"operation\":\"{operation}\",\"items\":{items}}}'\n\
         \x20 curl -s -X POST http://{address}/v1/settle -d '{{\"transaction_id\":\"demo-1\",\"status\":200,\"attributes\":{{\"records\":\"1\"}}}}'\n\
         \x20 curl -s http://{address}/v1/tenants/acme/balances\n",
        name = policy.name,
        version = policy.version,
        digest = policy.digest,
        contract = policy.contract,
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}

/// Polls the policy file and activates it again whenever its contents change, with the
/// signature beside it (`FILE.sig`, which a meter with trusted keys checks). A module
/// that fails its checks is reported and the active policy stays; one refused for its
/// signature is tried again when the signature changes (a module copied in before its
/// `.sig`).
fn watch(meter: Arc<Meter>, path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("creditgate-watch".to_owned())
        .spawn(move || {
            let read_signature = || super::policy::read_signature(&path).ok().flatten();
            let mut last = std::fs::read(&path).ok();
            let mut last_signature = read_signature();
            let mut refused_for_signature = false;
            loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                let Ok(current) = std::fs::read(&path) else { continue };
                let signature = read_signature();
                let signed_anew = refused_for_signature && signature != last_signature;
                if last.as_ref() == Some(&current) && !signed_anew {
                    continue;
                }
                refused_for_signature = false;
                match meter.activate_signed(current.clone(), signature.as_deref(), "watch") {
                    Ok(info) => tracing::warn!(policy = %info.name, digest = %info.digest, "activated the changed policy file"),
                    Err(error) => {
                        refused_for_signature = matches!(
                            error,
                            MeterError::SignatureRequired(_) | MeterError::SignatureInvalid { .. }
                        );
                        tracing::error!(%error, "the changed policy file was refused; the active policy stays");
                    }
                }
                last = Some(current);
                last_signature = signature;
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot watch the policy file");
    }
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
