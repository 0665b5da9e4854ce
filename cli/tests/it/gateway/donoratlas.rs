//! The DonorAtlas rules through the gateway: a person costs an enhancement credit
//! whatever the outcome, a short balance processes only the first persons, a unique new
//! donor costs an export credit once (`shared/seeds/donoratlas-credits-and-billing.txt`).

use creditgate_tower::{AttributeSource, Route, Routes, TenantSource};
use http::Method;
use serde_json::{Value, json};

use super::{Gateway, through_proxy_and_layer};

/// The README's routes file.
const ROUTES: &str = include_str!("../../../../docs/routes/donoratlas.toml");

fn routes() -> Routes {
    Routes::new(TenantSource::Header("x-team".into()))
        .route(
            Route::new(Method::PUT, "/v1/enhance", "enhance")
                .items("/persons", Some("tracking_id"))
                .meta("meta"),
        )
        .route(
            Route::new(Method::POST, "/v1/export", "export")
                .items("/donor_ids", None)
                .meta("meta"),
        )
        .route(Route::new(Method::GET, "/v1/search", "search"))
        .route(
            Route::new(Method::GET, "/v1/donors/{id}", "profile.get")
                .attribute("donor", AttributeSource::Path("id".into())),
        )
}

fn proxy() -> Gateway {
    Gateway::proxy("donoratlas", ROUTES)
}

fn layer() -> Gateway {
    Gateway::layer("donoratlas", routes())
}

const TEAM: (&str, &str) = ("x-team", "acme");

fn enhance(gateway: &Gateway, ids: &[String]) -> super::Answer {
    let body = json!({"persons": ids.iter().map(|id| json!({"tracking_id": id, "name": "P"})).collect::<Vec<_>>()});
    gateway.send("PUT", "/v1/enhance", &[TEAM], Some(&body.to_string()))
}

fn export(gateway: &Gateway, donors: &[&str]) -> super::Answer {
    gateway.send(
        "POST",
        "/v1/export",
        &[TEAM],
        Some(&json!({"donor_ids": donors}).to_string()),
    )
}

fn tracking_ids(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("t{index}")).collect()
}

fn a_partial_batch_forwards_exactly_the_first_persons(gateway: &Gateway) {
    gateway.grant("acme", "enhancement", 3);
    let answer = enhance(gateway, &tracking_ids(10));
    assert_eq!(answer.status, 202, "{}", answer.body);
    let received = gateway.upstream.received();
    let forwarded: Vec<&str> = received[0].body["persons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|person| person["tracking_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        forwarded,
        ["t0", "t1", "t2"],
        "only the first 3 persons are processed"
    );
    assert_eq!(
        answer.body["tracking_id_to_job_id"]
            .as_object()
            .map(|jobs| jobs.len()),
        Some(3)
    );
    let meta = &answer.body["meta"];
    assert_eq!(
        (
            &meta["requested"],
            &meta["processed"],
            &meta["imports_charged"],
            &meta["imports_remaining"],
            &meta["partial"]
        ),
        (&json!(10), &json!(3), &json!(3), &json!(0), &json!(true)),
        "{meta}"
    );
    assert_eq!(
        meta["partial_reason"],
        json!("Only 3 credits remaining, but 10 persons requested")
    );
    assert_eq!(gateway.balance("acme", "enhancement"), (0, 0));
}

fn zero_credits_is_402_and_nothing_is_forwarded(gateway: &Gateway) {
    let answer = enhance(gateway, &tracking_ids(2));
    assert_eq!(
        (answer.status, answer.code()),
        (402, "payment_required"),
        "{}",
        answer.body
    );
    assert_eq!(gateway.upstream.hits(), 0);
}

fn enhancement_is_charged_whatever_the_outcome(gateway: &Gateway) {
    gateway.grant("acme", "enhancement", 5);
    let answer = enhance(gateway, &["fail".to_owned(), "t1".to_owned()]);
    assert_eq!(
        answer.status, 500,
        "the upstream's failure reaches the client: {}",
        answer.body
    );
    assert_eq!(answer.body["meta"]["imports_charged"], json!(2));
    assert_eq!(gateway.balance("acme", "enhancement"), (3, 0));
}

fn a_unique_new_donor_costs_one_export_credit_once(gateway: &Gateway) {
    gateway.grant("acme", "export", 5);
    let first = export(gateway, &["d1", "d2", "d1"]);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.body["meta"],
        json!({"credits_used": 2, "exports_remaining": 3})
    );
    assert_eq!(
        first.body["donors"],
        json!(["d1", "d2", "d1"]),
        "the whole request is forwarded"
    );
    let second = export(gateway, &["d1", "d3"]);
    assert_eq!(second.body["meta"]["credits_used"], json!(1));
    let again = export(gateway, &["d2"]);
    assert_eq!(
        again.body["meta"]["credits_used"],
        json!(0),
        "re-exports are free"
    );
    assert_eq!(gateway.balance("acme", "export"), (2, 0));
}

fn an_export_past_the_credits_is_refused_whole(gateway: &Gateway) {
    gateway.grant("acme", "export", 1);
    let refused = export(gateway, &["a", "b"]);
    assert_eq!(
        (refused.status, refused.code()),
        (402, "payment_required"),
        "{}",
        refused.body
    );
    assert_eq!(gateway.upstream.hits(), 0);
    let one = export(gateway, &["a"]);
    assert_eq!(
        one.body["meta"]["credits_used"],
        json!(1),
        "the refused export marked nothing"
    );
    assert_eq!(gateway.balance("acme", "export"), (0, 0));
}

fn features_without_credits_charge_nothing(gateway: &Gateway) {
    gateway.grant("acme", "enhancement", 1);
    let search = gateway.send("GET", "/v1/search?q=philanthropy", &[TEAM], None);
    let profile = gateway.send("GET", "/v1/donors/d-9", &[TEAM], None);
    assert_eq!((search.status, profile.status), (200, 200));
    assert_eq!(profile.body["id"], Value::from("d-9"));
    assert!(
        search.header("creditgate-transaction-id").is_some(),
        "a metered route"
    );
    assert_eq!(gateway.balance("acme", "enhancement"), (1, 0));
    let unknown_team = gateway.send("GET", "/v1/search", &[], None);
    assert_eq!(unknown_team.status, 401);
    assert_eq!(gateway.upstream.hits(), 2);
}

through_proxy_and_layer!(super::proxy(), super::layer();
    a_partial_batch_forwards_exactly_the_first_persons,
    zero_credits_is_402_and_nothing_is_forwarded,
    enhancement_is_charged_whatever_the_outcome,
    a_unique_new_donor_costs_one_export_credit_once,
    an_export_past_the_credits_is_refused_whole,
    features_without_credits_charge_nothing,
);
