//! The proxy's client of the upstream API: a keep-alive pool of HTTP/1.1 connections
//! (hyper), and the rewrite of each request onto the upstream's address.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use creditgate_tower::{Body, BoxError};
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Sends each request to the upstream, at its path under the upstream's base path.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
}

impl Upstream {
    /// Idle connections are kept this long for the next request (hyper's default).
    const POOL_IDLE_TIMEOUT_S: u64 = 90;

    /// A client of the API at `base` (`http://host:port`, with an optional base path).
    pub fn new(base: Uri) -> anyhow::Result<Self> {
        match base.scheme_str() {
            Some("http") => {}
            Some(other) => anyhow::bail!(
                "the upstream must be an http:// address (TLS to the upstream is not supported yet), not {other}://"
            ),
            None => anyhow::bail!("the upstream '{base}' needs a scheme: http://host:port"),
        }
        if base.authority().is_none() {
            anyhow::bail!("the upstream '{base}' has no host");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(Self::POOL_IDLE_TIMEOUT_S))
            .build(connector);
        Ok(Self { client, base })
    }

    /// The request's path and query under the upstream's base path.
    fn target(&self, request: &Uri) -> Result<Uri, http::Error> {
        let base_path = self.base.path().trim_end_matches('/');
        let path_and_query = request.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(format!("{base_path}{path_and_query}").parse()?);
        Ok(Uri::from_parts(parts)?)
    }
}

impl tower::Service<Request<Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let target = self.target(&parts.uri);
        let client = self.client.clone();
        Box::pin(async move {
            parts.uri = target?;
            strip_hop_by_hop(&mut parts.headers);
            // The client sets Host from the upstream's address.
            parts.headers.remove(header::HOST);
            let mut response = client.request(Request::from_parts(parts, body)).await?;
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        })
    }
}

/// Removes the headers that concern one connection, not the message (RFC 9110 §7.6.1):
/// those a `Connection` header names, and the standard ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_at_its_path_under_the_upstreams_base_path() {
        let upstream = |base: &str| {
            Upstream::new(base.parse().unwrap_or_else(|error| unreachable!("{error}")))
                .unwrap_or_else(|error| unreachable!("{error}"))
        };
        let target = |upstream: &Upstream, path: &str| {
            upstream
                .target(&path.parse().unwrap_or_else(|error| unreachable!("{error}")))
                .map(|uri| uri.to_string())
                .unwrap_or_else(|error| unreachable!("{error}"))
        };
        let root = upstream("http://127.0.0.1:9000");
        assert_eq!(
            target(&root, "/v1/enrich?mode=AUD"),
            "http://127.0.0.1:9000/v1/enrich?mode=AUD"
        );
        let prefixed = upstream("http://api.internal:80/partners/");
        assert_eq!(
            target(&prefixed, "/export"),
            "http://api.internal:80/partners/export"
        );
        assert!(
            Upstream::new(
                "https://x"
                    .parse()
                    .unwrap_or_else(|error| unreachable!("{error}"))
            )
            .is_err()
        );
    }

    #[test]
    fn connection_headers_and_the_ones_they_name_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-secret"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        headers.insert("x-secret", "1".parse().unwrap_or_else(|_| unreachable!()));
        headers.insert("x-kept", "1".parse().unwrap_or_else(|_| unreachable!()));
        headers.insert(
            header::UPGRADE,
            "websocket".parse().unwrap_or_else(|_| unreachable!()),
        );
        strip_hop_by_hop(&mut headers);
        assert_eq!(
            headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-kept"]
        );
    }
}
