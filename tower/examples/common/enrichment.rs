//! A SMARTe-style enrichment API that knows nothing of credits: one record per person
//! whose email does not start with `nomatch`.

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn api() -> Router {
    Router::new()
        .route("/v1/enrich/person", post(enrich))
        .route("/v1/status", get(|| async { "ok" }))
}

async fn enrich(Json(body): Json<Value>) -> Json<Value> {
    let records: Vec<Value> = body["persons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|person| person["email"].as_str())
        .filter(|email| !email.starts_with("nomatch"))
        .map(|email| json!({"email": email, "name": "Jane Doe"}))
        .collect();
    Json(json!({"data": records}))
}
