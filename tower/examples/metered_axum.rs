//! An axum API metered in credits by the layer: a SMARTe-style enrichment route charged
//! per record delivered, a status route left alone, the ledger in a SQLite file.
//!
//! ```sh
//! rustup target add wasm32-wasip2 && cargo policies
//! cargo run --release -p creditgate-tower --example metered_axum
//! curl -s -i -X POST 'http://127.0.0.1:3000/v1/enrich/person' -H 'x-tenant: acme' \
//!   -d '{"persons": [{"email": "jane@example.com"}, {"email": "nomatch@example.com"}]}'
//! ```
//!
//! The tenant `acme` starts with 10 credits; each answer carries `credits-deducted` and
//! the policy's meta under `meta`; at 0 credits the route answers 402 and the handler
//! never runs.

use std::sync::Arc;

use creditgate::model::GrantRequest;
use creditgate::store::StoreLocation;
use creditgate::{Meter, MeterConfig, PolicySource};
use creditgate_tower::{MeteringLayer, OutcomeSource, Route, Routes, TenantSource};

#[path = "common/enrichment.rs"]
mod enrichment;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let policy = std::fs::read("target/wasm32-wasip2/release/smarte.wasm").map_err(|error| {
        anyhow::anyhow!("{error}: build the policies first with `cargo policies`")
    })?;
    let meter = Arc::new(Meter::open(
        MeterConfig::new(StoreLocation::Sqlite("metered-axum.db".into())),
        PolicySource::Component(policy),
    )?);
    meter
        .grant_async(GrantRequest {
            grant_id: "example-welcome".to_owned(),
            tenant: "acme".to_owned(),
            balance: "default".to_owned(),
            amount: 10,
            terms: Default::default(),
        })
        .await?;

    let routes = Routes::new(TenantSource::Header("x-tenant".to_owned())).route(
        Route::new(http::Method::POST, "/v1/enrich/person", "person.enrich")
            .items("/persons", Some("email"))
            .outcome("records", OutcomeSource::Length("/data".to_owned()))
            .meta("meta"),
    );
    let app = enrichment::api().layer(MeteringLayer::new(meter, routes)?);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("metered API on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
