//! The `creditgate` command: the HTTP sidecar, the metering proxy, operator commands,
//! policy checks, the hostile gallery and the benchmark. Parsing and the operator
//! commands are here; `serve`, `proxy`, `bench` and `gallery` have modules of their own.

mod bench;
mod check;
mod failure;
mod gallery;
mod limits;
mod new_policy;
mod operator;
mod policy;
mod proxy;
mod receiver;
mod replay;
mod serve;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where `cargo policies` puts the reference policy components.
pub const DEFAULT_POLICY: &str = "target/wasm32-wasip2/release/smarte.wasm";
pub const DEFAULT_DB: &str = "creditgate.db";

#[derive(Parser)]
#[command(
    name = "creditgate",
    version,
    about = "Meter API usage in credits with billing rules compiled to WebAssembly."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP sidecar.
    Serve(serve::ServeArgs),
    /// Run a metering reverse proxy in front of an upstream API (and the sidecar's API).
    Proxy(proxy::ProxyArgs),
    /// Top up a tenant's balance (idempotent by --grant-id).
    Grant(operator::GrantArgs),
    /// Set how far below zero spending may take a tenant's balance (0: not at all).
    Overdraft(operator::OverdraftArgs),
    /// Cap what a tenant's balance may spend per hour, day or month (or remove the cap).
    SpendCap(operator::SpendCapArgs),
    /// Set a tenant's recurring grant (every hour, day or month), or remove it.
    Refill(operator::RefillArgs),
    /// Watch a tenant's balance for events (low balance, expiring lots, ...), or stop.
    Thresholds(operator::ThresholdsArgs),
    /// Print the event feed as JSON lines (`--follow` to keep reading).
    Events(operator::EventsArgs),
    /// Receive webhook deliveries: check their signature, print each event once.
    WebhookReceiver(receiver::ReceiverArgs),
    /// Show a tenant's balances.
    Balance(operator::BalanceArgs),
    /// Show a tenant's journal and check that it sums to the balances.
    Ledger(operator::LedgerArgs),
    /// Activate, roll back or show the policy of a running sidecar; sign modules for it.
    Policy(policy::PolicyArgs),
    /// Run the conformance suite against a policy module.
    Check(check::CheckArgs),
    /// What a period of the ledger's traffic would have cost under a candidate policy.
    Replay(replay::ReplayArgs),
    /// Start a new policy crate from a template, with an example case.
    NewPolicy(new_policy::NewPolicyArgs),
    /// Measure authorize+settle throughput: in process and over HTTP, wasm and native.
    Bench(bench::BenchArgs),
    /// Run the hostile gallery: attacks by a policy, and what other tenants kept.
    Gallery(gallery::GalleryArgs),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    // `check` and `gallery` report every failure in their tables; their meters' own
    // warnings would repeat them.
    let default_level = if matches!(command, Command::Check(_) | Command::Gallery(_)) {
        "error"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CREDITGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colors for a person at a terminal; plain text for a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match command {
        Command::Check(args) => match check::run(args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::NewPolicy(args) => new_policy::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Grant(args) => operator::grant(args),
        Command::Overdraft(args) => operator::overdraft(args),
        Command::SpendCap(args) => operator::spend_cap(args),
        Command::Refill(args) => operator::refill(args),
        Command::Thresholds(args) => operator::thresholds(args),
        Command::Events(args) => operator::events(args),
        Command::WebhookReceiver(args) => receiver::run(args),
        Command::Balance(args) => operator::balance(args),
        Command::Ledger(args) => operator::ledger(args),
        Command::Bench(args) => bench::run(args),
        Command::Gallery(args) => gallery::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("creditgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a policy component, with a hint when the default one was never built.
pub fn read_policy(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read the policy component {}: {error}. Build the reference policies with \
             `rustup target add wasm32-wasip2 && cargo policies`",
            path.display()
        )
    })
}
