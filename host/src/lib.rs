//! creditgate meters API usage in credits.
//!
//! Credit rules are compiled to a WebAssembly component behind a WIT interface
//! (`wit/policy.wit`); this crate loads that component, feeds it each request and its
//! outcome, and keeps the balances in a durable ledger, so billing policy can be
//! swapped without redeploying the gateway.
//!
//! Data flows one way; each folder is one concern:
//!
//! ```text
//! request -> Meter (this library; creditgate-http's sidecar) -> meter (sequencer) -> policy (wasm) -> verdict
//!                                               \-> ledger (live state, batch record) -> store (log)
//! ```
//!
//! - [`policy`]: where a charge is decided (the sandboxed component, its contract, and
//!   the gate every activation passes).
//! - [`ledger`]: what a decision is: posting rules and the host's own guarantees (never
//!   below zero, journal sums to balances) whatever the policy says; the batch record
//!   and its binary codec; the live state in memory that records change.
//! - [`store`]: where records are written: the SQLite log (fsynced before any answer),
//!   its views, snapshots and recovery; PostgreSQL for replicas.
//! - [`meter`]: the entry point, [`Meter`]; one sequencer thread decides every request
//!   in one total order, a batch at a time, and a log thread makes each batch durable
//!   before its answers go out (see `docs/ledger.md`).
//!
//! Beside it: `creditgate-http` (the HTTP sidecar: router, server, `/openapi.json`,
//! `/metrics`), `creditgate-conformance` (the suite any policy module must pass),
//! `creditgate-tower` (the metering layer and the proxy's core), `creditgate-cli` (the
//! `creditgate` command).

pub mod clock;
pub mod error;
pub mod fuzzing;
pub mod ledger;
pub mod meter;
pub mod model;
pub mod policy;
pub mod store;
pub mod webhooks;

pub use error::MeterError;
pub use meter::{Meter, MeterConfig, NativePolicy, PolicySource};

/// The README's Rust examples, compiled as doctests so the README cannot lie.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
