//! An upstream API that behaves like the two seeds' (SMARTe enrichment, the DonorAtlas
//! partners API), logging every request it receives: what a metered route forwarded,
//! and whether it was called at all.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
pub struct UpstreamLog {
    received: Mutex<Vec<Received>>,
}

impl UpstreamLog {
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn record(&self, path: &str, body: &Value) {
        self.received.lock().unwrap().push(Received {
            path: path.to_owned(),
            body: body.clone(),
        });
    }
}

/// The upstream's routes.
pub fn router(log: Arc<UpstreamLog>) -> Router {
    Router::new()
        .route("/v1/enrich/person", post(enrich_person))
        .route("/v1/status", get(status))
        .route("/v1/enhance", put(enhance))
        .route("/v1/export", post(export))
        .route("/v1/search", get(search))
        .route("/v1/donors/{id}", get(donor))
        .with_state(log)
}

/// SMARTe-style person enrichment: `{"persons": [{"email"}]}` → `{"data": [records]}`,
/// one record per person whose email does not start with `nomatch`. The first email
/// picks a failure: `ratelimited@` 429, `unauthorized@` 401, `invalid@` 422,
/// `missing@` 404, `broken@` 500, `slow@` answers after 2 s.
async fn enrich_person(State(log): State<Arc<UpstreamLog>>, Json(body): Json<Value>) -> Response {
    log.record("/v1/enrich/person", &body);
    let emails: Vec<String> = body["persons"]
        .as_array()
        .map(|persons| {
            persons
                .iter()
                .filter_map(|person| person["email"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let first = emails.first().map(String::as_str).unwrap_or_default();
    let failure = |status: StatusCode, message: &str| {
        (status, Json(json!({"error": message}))).into_response()
    };
    match first.split('@').next().unwrap_or_default() {
        "ratelimited" => return failure(StatusCode::TOO_MANY_REQUESTS, "rate limited"),
        "unauthorized" => return failure(StatusCode::UNAUTHORIZED, "bad credentials"),
        "invalid" => return failure(StatusCode::UNPROCESSABLE_ENTITY, "invalid input"),
        "missing" => return failure(StatusCode::NOT_FOUND, "no match"),
        "broken" => return failure(StatusCode::INTERNAL_SERVER_ERROR, "upstream bug"),
        "slow" => tokio::time::sleep(std::time::Duration::from_secs(2)).await,
        _ => {}
    }
    let data: Vec<Value> = emails
        .iter()
        .filter(|email| !email.starts_with("nomatch"))
        .map(|email| json!({"email": email, "name": "Jane Doe", "title": "CTO"}))
        .collect();
    Json(json!({"data": data})).into_response()
}

async fn status() -> &'static str {
    "ok"
}

/// DonorAtlas-style enhancement: `{"persons": [{"tracking_id"}]}` → 202 with a job per
/// person received. A first tracking id `fail` answers 500.
async fn enhance(State(log): State<Arc<UpstreamLog>>, Json(body): Json<Value>) -> Response {
    log.record("/v1/enhance", &body);
    let ids: Vec<&str> = body["persons"]
        .as_array()
        .map(|persons| {
            persons
                .iter()
                .filter_map(|p| p["tracking_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if ids.first() == Some(&"fail") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "down"})),
        )
            .into_response();
    }
    let jobs: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| ((*id).to_owned(), Value::String(format!("job-{id}"))))
        .collect();
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": 202, "message": "Jobs submitted", "tracking_id_to_job_id": jobs})),
    )
        .into_response()
}

/// DonorAtlas-style export: `{"donor_ids": [...]}` → the donors' records.
async fn export(State(log): State<Arc<UpstreamLog>>, Json(body): Json<Value>) -> Response {
    log.record("/v1/export", &body);
    Json(json!({"donors": body["donor_ids"]})).into_response()
}

async fn search(State(log): State<Arc<UpstreamLog>>) -> Json<Value> {
    log.record("/v1/search", &Value::Null);
    Json(json!({"results": [{"id": "d-1"}]}))
}

async fn donor(State(log): State<Arc<UpstreamLog>>, Path(id): Path<String>) -> Json<Value> {
    log.record(&format!("/v1/donors/{id}"), &Value::Null);
    Json(json!({"id": id, "name": "A Donor"}))
}
