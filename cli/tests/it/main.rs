//! One integration-test binary, a module per concern. Every test runs the real thing:
//! wasm components built from `policy/` and `tests/fixtures/` (run `cargo policies`
//! first), a SQLite file on disk or a PostgreSQL schema, and for `http`, `replicas` and
//! `gateway`, `creditgate serve` and `creditgate proxy` processes.
// Test helpers fail loudly by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod account;
mod conformance;
mod crash_cycles;
mod donoratlas;
mod durability;
mod events;
mod failure_mode;
mod gateway;
mod guarantees;
mod guest_sdks;
mod hostile;
mod http;
mod http_limits;
mod ledger_log;
mod ledger_model;
mod lifecycle;
mod lossy_fs;
mod lots;
mod observability;
mod overdraft;
mod quote;
mod refills;
mod replay;
mod replicas;
mod sandbox;
mod scheduled;
mod signing;
mod smarte;
mod spend_cap;
mod support;
mod webhooks;
