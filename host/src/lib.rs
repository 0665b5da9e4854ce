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
//! request -> api (HTTP) / Meter (library) -> meter (sequencer) -> policy (wasm) -> verdict
//!                                               \-> ledger (posting rules) -> store (SQLite)
//! ```
//!
//! - [`policy`]: where a charge is decided (the sandboxed component, its contract).
//! - [`ledger`]: how a decision becomes journal entries; the host's own guarantees
//!   (never below zero, journal sums to balances) whatever the policy says.
//! - [`store`]: where it is written (SQLite, WAL, fsync before acknowledging).
//! - [`meter`]: the entry point, [`Meter`]; one sequencer thread gives every decision
//!   one total order and batches them into one store transaction each.
//! - [`api`]: the HTTP sidecar (axum), no business rules.
//! - [`conformance`]: the checks any policy module must pass before it prices a call.

pub mod api;
pub mod clock;
pub mod conformance;
pub mod error;
pub mod ledger;
pub mod meter;
pub mod model;
pub mod policy;
pub mod store;

pub use error::MeterError;
pub use meter::{Meter, MeterConfig, NativePolicy, PolicySource};

/// The README's Rust examples, compiled as doctests so the README cannot lie.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
