//! Which requests are metered and how each becomes an authorize and a settle: the routes
//! file of `creditgate proxy` (TOML) and the typed builder of the layer are this one
//! value.
//!
//! ```toml
//! [tenant]
//! api_key = "x-api-key"          # or: header = "x-tenant"
//!
//! [api_keys]
//! "sk_test_acme" = "acme"
//!
//! [[route]]
//! method = "POST"
//! path = "/v1/enrich/person"
//! operation = "person.enrich"
//! items = { pointer = "/persons", id = "email" }
//! attributes = { mode = { query = "mode" } }
//! outcome = { records = { length = "/data" } }
//! meta = "meta"
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use serde::Deserialize;

use crate::pattern::PathPattern;

/// Every metered route, where the tenant comes from, and the bounds of a metered call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// Where each request's tenant comes from.
    pub tenant: TenantSource,
    /// API key → tenant, for [`TenantSource::ApiKey`].
    #[serde(default)]
    pub api_keys: BTreeMap<String, String>,
    /// The request header whose value is the transaction id (the idempotency key); a
    /// request without it gets a fresh id.
    #[serde(default = "Routes::default_idempotency_header")]
    pub idempotency_header: String,
    /// The metered routes; the first that matches a request's method and path applies.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub limits: GatewayLimits,
}

/// Where the tenant of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TenantSource {
    /// The named header holds the tenant's name.
    Header(String),
    /// The named header holds an API key (a `Bearer ` prefix is dropped), looked up in
    /// [`Routes::api_keys`].
    ApiKey(String),
}

/// One metered route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `GET`, `POST`, ...
    pub method: String,
    /// `/v1/persons/{id}`: `{name}` matches one segment, a final `{*name}` the rest.
    pub path: String,
    /// The policy's name for the call, e.g. `person.enrich`.
    pub operation: String,
    /// Where the batch items are in the request's JSON body; none: no items.
    #[serde(default)]
    pub items: Option<ItemsSource>,
    /// The policy's request attributes, by name.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeSource>,
    /// The settle's attributes, read from the upstream's answer, by name.
    #[serde(default)]
    pub outcome: BTreeMap<String, OutcomeSource>,
    /// Merge the policy's meta into the upstream's JSON answer (and into a refusal)
    /// under this key.
    #[serde(default)]
    pub meta: Option<String>,
}

/// The batch items: the array at `pointer` (a JSON pointer, RFC 6901) of the request
/// body; each item is the element itself or, with `id`, its field of that name (a
/// string or an integer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsSource {
    pub pointer: String,
    #[serde(default)]
    pub id: Option<String>,
}

/// Where a request attribute comes from; absent in the request, absent for the policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AttributeSource {
    /// A query parameter of this name (`?mode=AUD`).
    Query(String),
    /// A request header of this name.
    Header(String),
    /// A `{name}` segment of the route's path.
    Path(String),
    /// This value, always.
    Value(String),
}

/// Where an outcome attribute comes from in the upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutcomeSource {
    /// The length of the array at this JSON pointer of the answer (`records`); a missing
    /// or non-array value gives no attribute.
    Length(String),
    /// The value at this JSON pointer (a string, number or boolean, as text).
    Pointer(String),
    /// A response header of this name.
    Header(String),
}

/// The bounds of one metered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayLimits {
    /// A metered request's body is read whole (its items, a cut batch) up to this size:
    /// past it, 413 `payload_too_large` and nothing is authorized.
    pub request_body_bytes_max: usize,
    /// A metered request's body must arrive within this time: past it, 408
    /// `request_timeout` and nothing is authorized.
    pub request_body_read_timeout_ms: u64,
    /// An upstream answer the route reads (an outcome pointer, a meta merge) is read up
    /// to this size: past it, the client gets 502 `upstream_answer_too_large` and the
    /// settle says 502, so a delivery-priced call charges nothing.
    pub response_body_bytes_max: usize,
    /// The upstream must answer (its head) within this time: past it, 504
    /// `upstream_timeout`, settled as 504.
    pub upstream_timeout_ms: u64,
}

impl GatewayLimits {
    /// The sidecar's own request bound: a batch of a few thousand items.
    pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
    /// As the sidecar's: a client on the same network sends 1 MiB in milliseconds; 10 s
    /// tolerates a stalled one and frees the call from one that trickles its body.
    pub const REQUEST_BODY_READ_TIMEOUT_MS: u64 = 10_000;
    /// Enrichment answers run to a few hundred KiB for large batches.
    pub const RESPONSE_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
    /// Enrichment upstreams answer in seconds; 30 s is the common gateway default.
    pub const UPSTREAM_TIMEOUT_MS: u64 = 30_000;
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            request_body_bytes_max: Self::REQUEST_BODY_BYTES_MAX,
            request_body_read_timeout_ms: Self::REQUEST_BODY_READ_TIMEOUT_MS,
            response_body_bytes_max: Self::RESPONSE_BODY_BYTES_MAX,
            upstream_timeout_ms: Self::UPSTREAM_TIMEOUT_MS,
        }
    }
}

/// A routes description that cannot work, named in a sentence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RoutesError(pub String);

impl Routes {
    fn default_idempotency_header() -> String {
        "idempotency-key".to_owned()
    }

    /// No routes yet; the tenant from `tenant`.
    pub fn new(tenant: TenantSource) -> Self {
        Self {
            tenant,
            api_keys: BTreeMap::new(),
            idempotency_header: Self::default_idempotency_header(),
            routes: Vec::new(),
            limits: GatewayLimits::default(),
        }
    }

    /// Parses a routes file.
    pub fn from_toml(text: &str) -> Result<Self, RoutesError> {
        toml::from_str(text).map_err(|error| RoutesError(format!("invalid routes file: {error}")))
    }

    /// Adds an API key of a tenant.
    pub fn api_key(mut self, key: impl Into<String>, tenant: impl Into<String>) -> Self {
        self.api_keys.insert(key.into(), tenant.into());
        self
    }

    /// Adds a route; the first that matches applies.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    pub fn limits(mut self, limits: GatewayLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks every route and prepares it for matching.
    pub(crate) fn compile(self) -> Result<CompiledRoutes, RoutesError> {
        if let TenantSource::ApiKey(_) = self.tenant
            && self.api_keys.is_empty()
        {
            return Err(RoutesError(
                "the tenant comes from an API key, but no [api_keys] are given".to_owned(),
            ));
        }
        let idempotency_header = header_name(&self.idempotency_header)?;
        let tenant = match &self.tenant {
            TenantSource::Header(name) => CompiledTenant::Header(header_name(name)?),
            TenantSource::ApiKey(name) => CompiledTenant::ApiKey(header_name(name)?),
        };
        let routes = self
            .routes
            .into_iter()
            .map(|route| {
                let what = format!("route {} {}", route.method, route.path);
                compile_route(route)
                    .map(Arc::new)
                    .map_err(|RoutesError(error)| RoutesError(format!("{what}: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.limits.request_body_bytes_max == 0 || self.limits.response_body_bytes_max == 0 {
            return Err(RoutesError(
                "a body bound of 0 bytes admits nothing".to_owned(),
            ));
        }
        Ok(CompiledRoutes {
            tenant,
            api_keys: self.api_keys,
            idempotency_header,
            routes,
            limits: self.limits,
        })
    }
}

impl Route {
    /// A route of `method` and `path` metered as `operation`.
    pub fn new(method: Method, path: impl Into<String>, operation: impl Into<String>) -> Self {
        Self {
            method: method.as_str().to_owned(),
            path: path.into(),
            operation: operation.into(),
            items: None,
            attributes: BTreeMap::new(),
            outcome: BTreeMap::new(),
            meta: None,
        }
    }

    /// The items are the array at `pointer`, each element itself or its field `id`.
    pub fn items(mut self, pointer: impl Into<String>, id: Option<&str>) -> Self {
        self.items = Some(ItemsSource {
            pointer: pointer.into(),
            id: id.map(str::to_owned),
        });
        self
    }

    pub fn attribute(mut self, name: impl Into<String>, source: AttributeSource) -> Self {
        self.attributes.insert(name.into(), source);
        self
    }

    pub fn outcome(mut self, name: impl Into<String>, source: OutcomeSource) -> Self {
        self.outcome.insert(name.into(), source);
        self
    }

    /// Merges the policy's meta into the answer under `key`.
    pub fn meta(mut self, key: impl Into<String>) -> Self {
        self.meta = Some(key.into());
        self
    }
}

fn compile_route(route: Route) -> Result<CompiledRoute, RoutesError> {
    let method = Method::from_bytes(route.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| RoutesError(format!("'{}' is not an HTTP method", route.method)))?;
    let path = PathPattern::parse(&route.path)?;
    if route.operation.is_empty() {
        return Err(RoutesError("the operation is empty".to_owned()));
    }
    if let Some(items) = &route.items {
        json_pointer(&items.pointer)?;
    }
    for (name, source) in &route.attributes {
        match source {
            AttributeSource::Header(header) => {
                header_name(header)?;
            }
            AttributeSource::Path(segment) if !path.has_parameter(segment) => {
                return Err(RoutesError(format!(
                    "attribute '{name}' reads path parameter '{{{segment}}}', which the path does not have"
                )));
            }
            _ => {}
        }
    }
    for source in route.outcome.values() {
        match source {
            OutcomeSource::Length(pointer) | OutcomeSource::Pointer(pointer) => {
                json_pointer(pointer)?;
            }
            OutcomeSource::Header(header) => {
                header_name(header)?;
            }
        }
    }
    Ok(CompiledRoute {
        reads_answer: route.meta.is_some()
            || route
                .outcome
                .values()
                .any(|source| !matches!(source, OutcomeSource::Header(_))),
        method,
        path,
        route,
    })
}

fn header_name(name: &str) -> Result<http::HeaderName, RoutesError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| RoutesError(format!("'{name}' is not a header name")))
}

fn json_pointer(pointer: &str) -> Result<(), RoutesError> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(RoutesError(format!(
            "'{pointer}' is not a JSON pointer: it must be empty or start with '/'"
        )))
    }
}

/// [`Routes`] checked and ready to match.
#[derive(Debug)]
pub(crate) struct CompiledRoutes {
    pub tenant: CompiledTenant,
    pub api_keys: BTreeMap<String, String>,
    pub idempotency_header: http::HeaderName,
    pub routes: Vec<Arc<CompiledRoute>>,
    pub limits: GatewayLimits,
}

#[derive(Debug)]
pub(crate) enum CompiledTenant {
    Header(http::HeaderName),
    ApiKey(http::HeaderName),
}

#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub method: Method,
    pub path: PathPattern,
    /// Whether settling needs the upstream's body (else it streams through).
    pub reads_answer: bool,
    pub route: Route,
}

impl CompiledRoutes {
    /// The first route for this method and path, with its path parameters.
    pub fn matching(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(Arc<CompiledRoute>, BTreeMap<String, String>)> {
        self.routes.iter().find_map(|route| {
            if route.method != method {
                return None;
            }
            route
                .path
                .matches(path)
                .map(|parameters| (Arc::clone(route), parameters))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_file_and_the_builder_describe_the_same_routes() {
        let file = Routes::from_toml(
            r#"
            [tenant]
            api_key = "x-api-key"
            [api_keys]
            "sk_acme" = "acme"
            [[route]]
            method = "post"
            path = "/v1/enrich/person"
            operation = "person.enrich"
            items = { pointer = "/persons", id = "email" }
            attributes = { mode = { query = "mode" } }
            outcome = { records = { length = "/data" } }
            meta = "meta"
            "#,
        )
        .unwrap_or_else(|error| unreachable!("{error}"));
        let built = Routes::new(TenantSource::ApiKey("x-api-key".into()))
            .api_key("sk_acme", "acme")
            .route(
                Route::new(Method::POST, "/v1/enrich/person", "person.enrich")
                    .items("/persons", Some("email"))
                    .attribute("mode", AttributeSource::Query("mode".into()))
                    .outcome("records", OutcomeSource::Length("/data".into()))
                    .meta("meta"),
            );
        assert_eq!(format!("{:?}", file.tenant), format!("{:?}", built.tenant));
        assert_eq!(file.api_keys, built.api_keys);
        assert_eq!(file.routes[0].items, built.routes[0].items);
        assert_eq!(file.routes[0].attributes, built.routes[0].attributes);
        assert_eq!(file.routes[0].outcome, built.routes[0].outcome);
        assert_eq!(file.routes[0].meta, built.routes[0].meta);
        let compiled = file
            .compile()
            .unwrap_or_else(|error| unreachable!("{error}"));
        assert!(
            compiled
                .matching(&Method::POST, "/v1/enrich/person")
                .is_some()
        );
        assert!(
            compiled
                .matching(&Method::GET, "/v1/enrich/person")
                .is_none()
        );
    }

    #[test]
    fn a_routes_file_that_cannot_work_is_refused_with_a_sentence() {
        let cases = [
            ("[tenant]\napi_key = \"x-api-key\"\n", "no [api_keys]"),
            ("[tenant]\nheader = \"bad header\"\n", "not a header name"),
            (
                "[tenant]\nheader = \"x-tenant\"\n[[route]]\nmethod = \"POST\"\npath = \"/a\"\noperation = \"x\"\nitems = { pointer = \"persons\" }\n",
                "not a JSON pointer",
            ),
            (
                "[tenant]\nheader = \"x-tenant\"\n[[route]]\nmethod = \"GET\"\npath = \"/a/{id}\"\noperation = \"x\"\nattributes = { who = { path = \"name\" } }\n",
                "does not have",
            ),
            (
                "surprise = 1\n[tenant]\nheader = \"x-tenant\"\n",
                "unknown field",
            ),
            (
                "[tenant]\nheader = \"x-tenant\"\n[[route]]\nmethod = \"POST\"\npath = \"no-slash\"\noperation = \"x\"\n",
                "must start with '/'",
            ),
        ];
        for (text, expected) in cases {
            let error = Routes::from_toml(text)
                .and_then(Routes::compile)
                .err()
                .unwrap_or_else(|| unreachable!("accepted: {text}"));
            assert!(error.0.contains(expected), "{text}: {error}");
        }
    }
}
