//! `creditgate proxy`: a metering reverse proxy. The tower layer of `creditgate-tower`
//! in front of an HTTP client of the upstream API, with the meter in process; the
//! sidecar's API (grants, balances, policy swaps, `/metrics`) on a second address.

mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::middleware::from_fn_with_state;
use clap::Args;
use creditgate::Meter;
use creditgate::webhooks::deliver::Deliverer;
use creditgate_http::server;
use creditgate_http::{AppState, limits, router};
use creditgate_tower::{MeteringLayer, Routes};
use tokio::sync::watch;
use tower::Layer;

use crate::serve::{HttpArgs, MeterArgs, WebhookArgs, shutdown_signal};
pub use upstream::Upstream;

#[derive(Args)]
pub struct ProxyArgs {
    /// The routes file (TOML): which requests are metered and how (README, "Gateways").
    #[arg(long)]
    routes: PathBuf,
    /// The upstream API: `http://host:port`, with an optional base path.
    #[arg(long)]
    upstream: http::Uri,
    /// Address the proxy listens on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: SocketAddr,
    /// Address of the sidecar's API (grants, balances, policy, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:8787")]
    api_listen: SocketAddr,
    #[command(flatten)]
    meter: MeterArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    args.http.check_token(args.api_listen)?;
    let text = std::fs::read_to_string(&args.routes)
        .with_context(|| format!("cannot read the routes file {}", args.routes.display()))?;
    let routes = Routes::from_toml(&text)
        .with_context(|| format!("in the routes file {}", args.routes.display()))?;
    let upstream = Upstream::new(args.upstream.clone())?;
    // Counting from the start: the policy registered and activated on opening.
    creditgate_http::metrics::exporter();
    let meter = args.meter.open()?;
    // Delivers while the proxy serves; stopped (and joined) when `run` returns.
    let _deliverer = Deliverer::start(Arc::clone(&meter), args.webhooks.options())?;
    let layer = MeteringLayer::new(Arc::clone(&meter), routes)
        .with_context(|| format!("in the routes file {}", args.routes.display()))?;
    let connection_limits = args.http.connection_limits();
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let proxy_listener = server::bind(args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let api_listener = server::bind(args.api_listen)
            .with_context(|| format!("cannot listen on {}", args.api_listen))?;
        let proxy_address = proxy_listener.local_addr()?;
        let api_address = api_listener.local_addr()?;
        meter
            .announce(&format!("http://{api_address}"))
            .context("cannot record where the sidecar listens")?;
        print_banner(
            proxy_address,
            api_address,
            &args.upstream,
            &meter,
            &args.meter,
        );
        let state = Arc::new(AppState::new(
            meter,
            args.http.admin_token.clone(),
            args.http.api_limits(),
        ));
        let proxy =
            Router::new()
                .fallback_service(layer.layer(upstream))
                .layer(from_fn_with_state(
                    Arc::clone(&state.admission),
                    limits::bound_in_flight,
                ));
        let api = router(state);
        let (stop, stopping) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let until_stopped = |mut stopping: watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stopped| *stopped).await;
        };
        tokio::join!(
            server::serve(
                proxy_listener,
                proxy,
                connection_limits,
                until_stopped(stopping.clone())
            ),
            server::serve(
                api_listener,
                api,
                connection_limits,
                until_stopped(stopping)
            ),
        );
        Ok(())
    })
}

/// Says where the proxy and its API listen. A closed stdout must not take the proxy
/// down, so write errors are ignored.
fn print_banner(
    proxy: SocketAddr,
    api: SocketAddr,
    upstream: &http::Uri,
    meter: &Meter,
    args: &MeterArgs,
) {
    use std::io::Write;
    let policy = meter.policy();
    let banner = format!(
        "creditgate proxy listening on http://{proxy}, metering in front of {upstream}\n\
         sidecar API on http://{api}\n\
         policy {name} {version} (sha256 {digest}), contract {contract}, ledger {db}\n",
        name = policy.name,
        version = policy.version,
        digest = policy.digest,
        contract = policy.contract,
        db = args.db.describe(),
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}
