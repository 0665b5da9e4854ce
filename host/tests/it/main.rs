//! One integration-test binary, a module per concern. Every test runs the real thing:
//! wasm components built from `policy/` and `tests/fixtures/` (run `cargo policies`
//! first), a SQLite file on disk, and for `http`, a `creditgate serve` process.

mod donoratlas;
mod guarantees;
mod http;
mod sandbox;
mod smarte;
mod support;
