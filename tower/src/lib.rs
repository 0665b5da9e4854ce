//! Meters an HTTP service in credits with [creditgate](creditgate): a tower [`Layer`]
//! that, for each request of a metered route, authorizes it with the policy, forwards
//! it (cut to the admitted items) to the service it wraps, settles with what the service
//! answered, and adds the policy's headers and meta to the answer. Requests the policy
//! refuses are answered with its status, code and message and never reach the service.
//! `creditgate proxy` is this layer in front of an HTTP client.
//!
//! ```no_run
//! # use std::sync::Arc;
//! use creditgate_tower::{MeteringLayer, Route, Routes, TenantSource, OutcomeSource};
//! # fn app(meter: Arc<creditgate::meter::Meter>, router: axum::Router) -> anyhow::Result<axum::Router> {
//! let routes = Routes::new(TenantSource::Header("x-tenant".into())).route(
//!     Route::new(http::Method::POST, "/v1/enrich/person", "person.enrich")
//!         .items("/persons", Some("email"))
//!         .outcome("records", OutcomeSource::Length("/data".into())),
//! );
//! Ok(router.layer(MeteringLayer::new(meter, routes)?))
//! # }
//! ```
//!
//! [`Layer`]: tower::Layer

mod answer;
mod extract;
pub mod fuzzing;
mod pattern;
mod routes;
mod service;

pub use answer::{Body, BoxError};
pub use routes::{
    AttributeSource, GatewayLimits, ItemsSource, OutcomeSource, Route, Routes, RoutesError,
    TenantSource,
};
pub use service::{MeteringLayer, MeteringService, SETTLE_HEADER, TRANSACTION_HEADER};
