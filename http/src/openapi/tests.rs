//! The document cannot drift from the router: the same routes, method by method; each
//! documented route answers with a documented status, and the admin ones (and only
//! they) need the token; the README's example requests are valid bodies of the
//! document.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};

use super::ApiDoc;
use crate::limits::ApiLimits;
use crate::{AppState, router, routes};
use creditgate::{Meter, MeterConfig, NativePolicy, PolicySource};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// The sidecar's state on a fresh SQLite ledger, the SMARTe rules linked natively, and
/// an admin token.
fn state() -> (tempfile::TempDir, Arc<AppState>) {
    let dir = tempfile::tempdir().unwrap();
    let meter = Meter::open(
        MeterConfig::new(dir.path().join("ledger.db")),
        PolicySource::Native(NativePolicy::of::<smarte::Smarte>("smarte")),
    )
    .unwrap();
    let state = AppState::new(
        Arc::new(meter),
        Some("s3cret".to_owned()),
        ApiLimits::default(),
    );
    (dir, Arc::new(state))
}

/// The operation of `item` for `method`, if the document has one.
fn operation<'a>(item: &'a PathItem, method: &Method) -> Option<&'a Operation> {
    match *method {
        Method::GET => item.get.as_ref(),
        Method::POST => item.post.as_ref(),
        Method::PUT => item.put.as_ref(),
        Method::DELETE => item.delete.as_ref(),
        Method::PATCH => item.patch.as_ref(),
        _ => None,
    }
}

/// Every (method, path) of a document.
fn operations(document: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
    document
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| operation(item, method).is_some())
                .map(|method| (method.to_string(), path.clone()))
        })
        .collect()
}

#[test]
fn the_document_names_every_route_of_the_router_and_no_other() {
    let (_dir, state) = state();
    let (_, routed) = routes(&state).split_for_parts();
    let routed = operations(&routed);
    let documented = operations(&ApiDoc::openapi());
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes the router serves that ApiDoc's `paths(...)` leaves out"
    );
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "operations ApiDoc documents that the router does not serve"
    );
    assert!(routed.len() >= 17, "{routed:?}");
}

/// Status and JSON body (or text) of a request without credentials.
async fn call(app: &Router, method: &Method, path: &str) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_answers_a_documented_status_and_only_admin_routes_need_the_token() {
    let (_dir, state) = state();
    let app = router(state);
    let document = ApiDoc::openapi();
    let mut admin = BTreeSet::new();
    for (template, item) in &document.paths.paths {
        let path = template
            .replace("{tenant}", "probe")
            .replace("{id}", "probe");
        for method in &METHODS {
            let (status, body) = call(&app, method, &path).await;
            let Some(operation) = operation(item, method) else {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (405, &Value::from("method_not_allowed")),
                    "{method} {path} is not documented: {body}"
                );
                continue;
            };
            let needs_token = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            if needs_token {
                admin.insert(format!("{method} {template}"));
            }
            assert_eq!(
                status == 401,
                needs_token,
                "{method} {path} answered {status} without a token; needs the token by its document: {needs_token}; {body}"
            );
            assert!(
                operation
                    .responses
                    .responses
                    .contains_key(&status.to_string()),
                "{method} {path} answered {status}, which its document does not list: {body}"
            );
        }
    }
    assert_eq!(
        admin,
        [
            "POST /v1/tenants/{tenant}/grants",
            "POST /v1/tenants/{tenant}/grants/{grant_id}/void",
            "PUT /v1/tenants/{tenant}/balances/{balance}/overdraft",
            "PUT /v1/tenants/{tenant}/balances/{balance}/spend-cap",
            "DELETE /v1/tenants/{tenant}/balances/{balance}/spend-cap",
            "PUT /v1/tenants/{tenant}/refills/{refill_id}",
            "DELETE /v1/tenants/{tenant}/refills/{refill_id}",
            "PUT /v1/tenants/{tenant}/balances/{balance}/thresholds",
            "DELETE /v1/tenants/{tenant}/balances/{balance}/thresholds",
            "GET /v1/events",
            "PUT /v1/webhooks/{webhook_id}",
            "DELETE /v1/webhooks/{webhook_id}",
            "GET /v1/webhooks",
            "GET /v1/webhooks/{webhook_id}/dead",
            "POST /v1/webhooks/{webhook_id}/dead/{event_id}/requeue",
            "GET /v1/audit",
            "PUT /v1/policy",
            "POST /v1/policy/rollback",
            "DELETE /v1/policy/shadow",
            "POST /v1/policy/shadow/promote",
        ]
        .map(str::to_owned)
        .into(),
        "the admin calls of the README"
    );
    let (status, body) = call(&app, &Method::GET, "/v1/no-such-route").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &Value::from("not_found"))
    );
}

/// The README's example requests: `curl ... [-X METHOD] http://HOST/PATH [-d 'BODY']`.
fn readme_requests() -> Vec<(Method, String, Option<Value>)> {
    include_str!("../../../README.md")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("curl -s "))
        .map(|command| {
            let (method, rest) = match command.strip_prefix("-X ") {
                Some(rest) => rest.split_once(' ').unwrap(),
                None => ("GET", command),
            };
            let (url, body) = match (rest.split_once(" -d '"), rest.split_once(" -d \"")) {
                (Some((url, body)), _) => (url, Some(body.strip_suffix('\'').unwrap().to_owned())),
                (None, Some((url, body))) => {
                    (url, Some(shell_computed(body.strip_suffix('"').unwrap())))
                }
                (None, None) => (rest, None),
            };
            // A URL with a query is quoted for the shell; the document's paths have none.
            let url = url.trim_matches('\'');
            let url = url.split_once('?').map_or(url, |(path, _)| path);
            let path = &url[url.find("/v1/").unwrap()..];
            (
                method.parse().unwrap(),
                path.to_owned(),
                body.map(|body| serde_json::from_str(&body).unwrap()),
            )
        })
        .collect()
}

/// A double-quoted body the shell completes (an expiry a minute from now): its quotes
/// unescaped and each `$(( ... ))` replaced by 0, a number of the same type.
fn shell_computed(body: &str) -> String {
    let mut body = body.replace("\\\"", "\"");
    while let Some(start) = body.find("$((") {
        let end = body[start..].find("))").map(|end| start + end + 2).unwrap();
        body.replace_range(start..end, "0");
    }
    body
}

/// The template of the document's path that `path` matches.
fn template_of<'a>(document: &'a utoipa::openapi::OpenApi, path: &str) -> Option<&'a str> {
    document
        .paths
        .paths
        .keys()
        .map(String::as_str)
        .find(|template| {
            let (template, path): (Vec<_>, Vec<_>) =
                (template.split('/').collect(), path.split('/').collect());
            template.len() == path.len()
                && template
                    .iter()
                    .zip(&path)
                    .all(|(part, segment)| part.starts_with('{') || part == segment)
        })
}

#[test]
fn the_readme_example_requests_are_valid_requests_of_the_document() {
    let document = ApiDoc::openapi();
    let mut root = serde_json::to_value(&document).unwrap();
    let requests = readme_requests();
    assert!(requests.len() >= 4, "{requests:?}");
    for (method, path, body) in requests {
        let template = template_of(&document, &path)
            .unwrap_or_else(|| panic!("{method} {path}: no such path in the document"));
        let operation = operation(&document.paths.paths[template], &method)
            .unwrap_or_else(|| panic!("{method} {path}: no such operation in the document"));
        let Some(body) = body else {
            assert!(
                operation.request_body.is_none(),
                "{method} {path} takes a body"
            );
            continue;
        };
        let request_body = serde_json::to_value(&operation.request_body).unwrap();
        // The body's schema, resolved against the whole document (its `$ref`s point
        // into `components`).
        root["$ref"] = request_body["content"]["application/json"]["schema"]["$ref"].clone();
        assert!(root["$ref"].is_string(), "{method} {path}: {request_body}");
        let validator = jsonschema::draft202012::new(&root).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{method} {path} {body}: {errors:?}");
        // A body whose fields are all optional may be empty; then a field the schema
        // does not name must fail it.
        let mut emptied = body.clone();
        emptied.as_object_mut().unwrap().clear();
        let unknown = serde_json::json!({"not_a_field": true});
        assert!(
            !validator.is_valid(&emptied) || !validator.is_valid(&unknown),
            "{method} {path}: an empty body and an unknown field pass the schema; the check \
             checks nothing"
        );
    }
}

#[test]
fn the_readme_lists_every_error_code_of_the_document() {
    let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let codes = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap();
    assert!(codes.len() > 20, "{codes:?}");
    let readme = include_str!("../../../README.md");
    for code in codes {
        let code = code.as_str().unwrap();
        assert!(
            readme.contains(&format!("| `{code}` |"))
                || readme.contains(&format!("`{code}` / "))
                || readme.contains(&format!(" / `{code}`")),
            "the README's table of errors does not list `{code}`"
        );
    }
}
