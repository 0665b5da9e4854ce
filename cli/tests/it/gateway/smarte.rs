//! The SMARTe rules through the gateway: credits are checked before the upstream is
//! called and deducted only for records delivered (`shared/seeds/smarte-credit-usage.txt`).

use creditgate_tower::{
    AttributeSource, GatewayLimits, OutcomeSource, Route, Routes, TenantSource,
};
use http::Method;
use serde_json::{Value, json};

use super::{Gateway, through_proxy_and_layer};

/// The README's routes file, with bounds short enough for a test.
fn routes_file() -> String {
    format!(
        "{}\n[limits]\nupstream_timeout_ms = 1000\nrequest_body_bytes_max = 65536\n",
        include_str!("../../../../docs/routes/smarte.toml")
    )
}

/// The same routes, built in Rust.
fn routes() -> Routes {
    Routes::new(TenantSource::ApiKey("authorization".into()))
        .api_key("sk_test_acme", "acme")
        .limits(GatewayLimits {
            upstream_timeout_ms: 1_000,
            request_body_bytes_max: 65_536,
            ..GatewayLimits::default()
        })
        .route(
            Route::new(Method::POST, "/v1/enrich/person", "person.enrich")
                .items("/persons", Some("email"))
                .attribute("mode", AttributeSource::Query("mode".into()))
                .outcome("records", OutcomeSource::Length("/data".into()))
                .meta("meta"),
        )
}

fn proxy() -> Gateway {
    Gateway::proxy("smarte", &routes_file())
}

fn layer() -> Gateway {
    Gateway::layer("smarte", routes())
}

const KEY: (&str, &str) = ("authorization", "Bearer sk_test_acme");

fn persons(emails: &[&str]) -> String {
    json!({"persons": emails.iter().map(|email| json!({"email": email})).collect::<Vec<_>>()})
        .to_string()
}

fn enrich(gateway: &Gateway, emails: &[&str]) -> super::Answer {
    gateway.send("POST", "/v1/enrich/person", &[KEY], Some(&persons(emails)))
}

fn delivered_records_are_charged_one_credit_each(gateway: &Gateway) {
    gateway.grant("acme", "default", 10);
    let answer = enrich(gateway, &["a@x.com", "nomatch@x.com", "b@x.com"]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(answer.header("credits-deducted"), Some("2"));
    let transaction = answer.header("creditgate-transaction-id").unwrap();
    assert_eq!(answer.header("x-transaction-id"), Some(transaction));
    assert_eq!(answer.body["meta"]["credits_deducted"], json!(2));
    assert_eq!(answer.body["meta"]["reason"], json!("delivered"));
    assert_eq!(gateway.balance("acme", "default"), (8, 0));
    let received = gateway.upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/enrich/person");
    assert_eq!(
        received[0].body,
        serde_json::from_str::<Value>(&persons(&["a@x.com", "nomatch@x.com", "b@x.com"])).unwrap()
    );
}

fn a_call_that_delivers_nothing_charges_nothing(gateway: &Gateway) {
    gateway.grant("acme", "default", 5);
    for (email, status) in [
        ("ratelimited@x.com", 429),
        ("unauthorized@x.com", 401),
        ("invalid@x.com", 422),
        ("missing@x.com", 404),
        ("broken@x.com", 500),
        ("nomatch@x.com", 200),
    ] {
        let answer = enrich(gateway, &[email]);
        assert_eq!(answer.status, status, "{email}: {}", answer.body);
        assert_ne!(answer.header("credits-deducted"), Some("1"), "{email}");
        assert!(answer.header("x-transaction-id").is_some(), "{email}");
        assert_eq!(gateway.balance("acme", "default"), (5, 0), "{email}");
    }
    assert_eq!(gateway.upstream.hits(), 6);
}

fn audit_only_mode_charges_nothing(gateway: &Gateway) {
    gateway.grant("acme", "default", 5);
    let answer = gateway.send(
        "POST",
        "/v1/enrich/person?mode=AUD",
        &[KEY],
        Some(&persons(&["a@x.com", "b@x.com"])),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("credits-deducted"), Some("0"));
    assert_eq!(answer.body["meta"]["reason"], json!("audit_only"));
    assert_eq!(gateway.balance("acme", "default"), (5, 0));
}

fn too_few_credits_is_refused_before_the_upstream(gateway: &Gateway) {
    gateway.grant("acme", "default", 1);
    let answer = enrich(gateway, &["a@x.com", "b@x.com"]);
    assert_eq!(answer.status, 402, "{}", answer.body);
    assert_eq!(answer.code(), "insufficient_credits");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 required")
    );
    assert_eq!(
        gateway.upstream.hits(),
        0,
        "a refused call never reaches the upstream"
    );
    assert_eq!(gateway.balance("acme", "default"), (1, 0));
}

fn a_repeat_with_the_same_idempotency_key_charges_once(gateway: &Gateway) {
    gateway.grant("acme", "default", 10);
    let send = || {
        gateway.send(
            "POST",
            "/v1/enrich/person",
            &[KEY, ("idempotency-key", "order-77")],
            Some(&persons(&["a@x.com", "b@x.com"])),
        )
    };
    let first = send();
    let second = send();
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.header("creditgate-transaction-id"), Some("order-77"));
    assert_eq!(second.header("credits-deducted"), Some("2"));
    assert_eq!(gateway.balance("acme", "default"), (8, 0), "charged once");
}

fn an_upstream_past_its_timeout_charges_nothing(gateway: &Gateway) {
    gateway.grant("acme", "default", 3);
    let answer = enrich(gateway, &["slow@x.com"]);
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.code(), "upstream_timeout");
    assert_eq!(answer.body["meta"]["reason"], json!("upstream_failed"));
    assert_eq!(
        gateway.balance("acme", "default"),
        (3, 0),
        "the hold is released"
    );
}

fn an_unknown_or_missing_api_key_is_refused_and_never_forwarded(gateway: &Gateway) {
    gateway.grant("acme", "default", 3);
    let body = persons(&["a@x.com"]);
    let unknown = gateway.send(
        "POST",
        "/v1/enrich/person",
        &[("authorization", "Bearer sk_nobody")],
        Some(&body),
    );
    let missing = gateway.send("POST", "/v1/enrich/person", &[], Some(&body));
    for answer in [unknown, missing] {
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.code(), "unknown_tenant");
    }
    assert_eq!(gateway.upstream.hits(), 0);
    assert_eq!(gateway.balance("acme", "default"), (3, 0));
}

fn paths_no_route_meters_pass_through_untouched(gateway: &Gateway) {
    let answer = gateway.send("GET", "/v1/status", &[], None);
    assert_eq!((answer.status, &answer.body), (200, &json!("ok")));
    assert_eq!(answer.header("creditgate-transaction-id"), None);
    assert_eq!(gateway.upstream.hits(), 0, "the status route logs nothing");
}

fn a_body_without_its_items_gets_a_clear_error_and_moves_nothing(gateway: &Gateway) {
    gateway.grant("acme", "default", 3);
    let cases = [
        (r#"{"people": []}"#, 400, "invalid_items"),
        (
            r#"{"persons": [{"name": "no email"}]}"#,
            400,
            "invalid_items",
        ),
        ("not json", 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let answer = gateway.send("POST", "/v1/enrich/person", &[KEY], Some(body));
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{body}: {}",
            answer.body
        );
    }
    // A body declared past the bound is refused before it is read.
    let answer = gateway.send_head_only("POST", "/v1/enrich/person", &[KEY], 65_537);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert_eq!(gateway.upstream.hits(), 0);
    assert_eq!(gateway.balance("acme", "default"), (3, 0));
}

through_proxy_and_layer!(super::proxy(), super::layer();
    delivered_records_are_charged_one_credit_each,
    a_call_that_delivers_nothing_charges_nothing,
    audit_only_mode_charges_nothing,
    too_few_credits_is_refused_before_the_upstream,
    a_repeat_with_the_same_idempotency_key_charges_once,
    an_upstream_past_its_timeout_charges_nothing,
    an_unknown_or_missing_api_key_is_refused_and_never_forwarded,
    paths_no_route_meters_pass_through_untouched,
    a_body_without_its_items_gets_a_clear_error_and_moves_nothing,
);

/// The proxy only: nothing listens at the upstream's address.
#[test]
fn an_unreachable_upstream_charges_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let gateway = Gateway::proxy_to("smarte", &routes_file(), &format!("http://{address}"));
    gateway.grant("acme", "default", 3);
    let answer = enrich(&gateway, &["a@x.com"]);
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.code(), "upstream_unavailable");
    assert!(answer.header("x-transaction-id").is_some());
    assert_eq!(
        gateway.balance("acme", "default"),
        (3, 0),
        "the hold is released"
    );
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"creditgate_gateway_errors_total{code="upstream_unavailable"} 1"#),
        "{metrics}"
    );
}
