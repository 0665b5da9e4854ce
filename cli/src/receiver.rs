//! `creditgate webhook-receiver`: a receiver of webhook deliveries, for trying webhooks
//! out and for tests. It checks each delivery's signature, prints each event once (a
//! retried delivery is acknowledged and not printed again) as a JSON line on stdout,
//! and refuses a delivery whose signature does not match with 401.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Args;

use creditgate::webhooks::sign::{EVENT_ID_HEADER, SIGNATURE_HEADER, verify};

#[derive(Args)]
pub struct ReceiverArgs {
    /// Address to listen on; port 0 picks a free one (printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: SocketAddr,
    /// The webhook's secret.
    #[arg(long, env = "CREDITGATE_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// How far a delivery's signing time may be from this clock, in ms.
    #[arg(long, default_value_t = 300_000)]
    tolerance_ms: u64,
}

struct Receiver {
    secret: String,
    tolerance_ms: u64,
    /// Event ids printed so far.
    seen: Mutex<BTreeSet<u64>>,
}

pub fn run(args: ReceiverArgs) -> anyhow::Result<()> {
    let receiver = Arc::new(Receiver {
        secret: args.secret,
        tolerance_ms: args.tolerance_ms,
        seen: Mutex::new(BTreeSet::new()),
    });
    super::serve::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "creditgate webhook-receiver listening on http://{}",
            listener.local_addr()?
        );
        let app = Router::new()
            .route("/", post(deliver))
            .route("/{*path}", post(deliver))
            .with_state(receiver);
        axum::serve(listener, app)
            .with_graceful_shutdown(super::serve::shutdown_signal())
            .await?;
        Ok(())
    })
}

async fn deliver(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(0));
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if let Err(why) = verify(
        receiver.secret.as_bytes(),
        signature,
        &body,
        now_ms,
        receiver.tolerance_ms,
    ) {
        eprintln!("refused a delivery: {why}");
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers
        .get(EVENT_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(id) = id else {
        eprintln!("refused a delivery without a {EVENT_ID_HEADER} header");
        return StatusCode::BAD_REQUEST;
    };
    let new = receiver
        .seen
        .lock()
        .map(|mut seen| seen.insert(id))
        .unwrap_or(false);
    if new {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&body);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    } else {
        eprintln!("duplicate delivery of event {id}: acknowledged, not printed again");
    }
    StatusCode::OK
}
