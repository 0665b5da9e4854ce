//! The gateway path end to end: every rule of both seeds through `creditgate proxy` (a
//! process, in front of an upstream API on real sockets) and through the tower layer
//! (in an axum app), with real HTTP clients. Each rule is written once and run both ways.

mod api;
mod donoratlas;
mod smarte;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use creditgate::model::GrantRequest;
use creditgate::store::scratch::{ScratchLedger, ScratchStore};
use creditgate::{Meter, MeterConfig, PolicySource};
use creditgate_tower::{MeteringLayer, Routes};
use serde_json::Value;

use crate::support::{Server, component, deterministic_limits, uuid};
use api::UpstreamLog;

/// An axum app served on a loopback port by a runtime of its own; stopped when dropped.
struct App {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl App {
    fn serve(router: axum::Router) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, router).await });
        Self {
            url: format!("http://{address}"),
            runtime: Some(runtime),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where the credits are kept: the proxy's sidecar API, or the layer's meter.
enum Ledger {
    Proxy(Server),
    Layer {
        meter: Arc<Meter>,
        _scratch: ScratchLedger,
    },
}

/// An answer a client got through the gateway.
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// A metered API: where clients call it, the upstream's log, and the ledger.
pub struct Gateway {
    pub url: String,
    pub upstream: Arc<UpstreamLog>,
    ledger: Ledger,
    // Dropped last: the gateway first, then its upstream.
    _apps: Vec<App>,
    _files: tempfile::TempDir,
}

impl Gateway {
    /// `creditgate proxy` with `routes` (TOML) in front of the upstream API.
    pub fn proxy(policy: &str, routes: &str) -> Self {
        let upstream = Arc::new(UpstreamLog::default());
        let app = App::serve(api::router(Arc::clone(&upstream)));
        let mut gateway = Self::proxy_to(policy, routes, &app.url);
        gateway.upstream = upstream;
        gateway._apps.push(app);
        gateway
    }

    /// `creditgate proxy` in front of `upstream_url`, whatever listens there.
    pub fn proxy_to(policy: &str, routes: &str, upstream_url: &str) -> Self {
        let files = tempfile::tempdir().unwrap();
        let routes_file = files.path().join("routes.toml");
        std::fs::write(&routes_file, routes).unwrap();
        let (server, url) = Server::start_proxy(
            policy,
            &files.path().join("ledger.db"),
            &routes_file,
            upstream_url,
        );
        Self {
            url,
            upstream: Arc::new(UpstreamLog::default()),
            ledger: Ledger::Proxy(server),
            _apps: Vec::new(),
            _files: files,
        }
    }

    /// The upstream API as an axum app wrapped in the metering layer.
    pub fn layer(policy: &str, routes: Routes) -> Self {
        let scratch = ScratchStore::Sqlite.create().unwrap();
        let mut config = MeterConfig::new(scratch.location().clone());
        config.limits = deterministic_limits();
        let meter =
            Arc::new(Meter::open(config, PolicySource::Component(component(policy))).unwrap());
        let upstream = Arc::new(UpstreamLog::default());
        let layer = MeteringLayer::new(Arc::clone(&meter), routes).unwrap();
        let app = App::serve(api::router(Arc::clone(&upstream)).layer(layer));
        Self {
            url: app.url.clone(),
            upstream,
            ledger: Ledger::Layer {
                meter,
                _scratch: scratch,
            },
            _apps: vec![app],
            _files: tempfile::tempdir().unwrap(),
        }
    }

    pub fn grant(&self, tenant: &str, balance: &str, amount: i64) {
        match &self.ledger {
            Ledger::Proxy(server) => server.grant(tenant, balance, amount, &uuid()),
            Ledger::Layer { meter, .. } => {
                meter
                    .grant(GrantRequest {
                        grant_id: uuid(),
                        tenant: tenant.to_owned(),
                        balance: balance.to_owned(),
                        amount,
                        terms: Default::default(),
                    })
                    .unwrap();
            }
        }
    }

    /// (available, held) of a balance.
    pub fn balance(&self, tenant: &str, balance: &str) -> (i64, i64) {
        let balances = match &self.ledger {
            Ledger::Proxy(server) => server.balances(tenant),
            Ledger::Layer { meter, .. } => {
                serde_json::to_value(meter.balances(tenant).unwrap()).unwrap()
            }
        };
        (
            balances["balances"][balance].as_i64().unwrap_or(0),
            balances["held"][balance].as_i64().unwrap_or(0),
        )
    }

    /// The proxy's `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        let Ledger::Proxy(server) = &self.ledger else {
            panic!("the layer's app serves no /metrics");
        };
        match server.get("/metrics") {
            (200, Value::String(text)) => text,
            other => panic!("/metrics answered {other:?}"),
        }
    }

    /// Sends a request through the gateway with these headers and body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = ureq::request(method, &format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request
                .set("content-type", "application/json")
                .send_string(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{method} {path}: {error}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                let value = response.header(&name)?.to_owned();
                Some((name, value))
            })
            .collect();
        let text = response.into_string().unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }
}

impl Gateway {
    /// Sends only a request's head, declaring a body of `content_length` bytes, and
    /// reads the whole answer (status line, headers, body) as text.
    pub fn send_head_only(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_length: usize,
    ) -> String {
        use std::io::{Read, Write};
        let address = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\nconnection: close\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }
}

/// Runs each rule (a `fn(&Gateway)` of this module's submodule) through the proxy and
/// through the layer, as a test of each.
macro_rules! through_proxy_and_layer {
    ($proxy:expr, $layer:expr; $($rule:ident),* $(,)?) => {
        mod through_proxy {
            $(#[test] fn $rule() { super::$rule(&$proxy) })*
        }
        mod through_layer {
            $(#[test] fn $rule() { super::$rule(&$layer) })*
        }
    };
}
use through_proxy_and_layer;
