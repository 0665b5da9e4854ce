//! Operator commands on a ledger file: grant, balance, ledger. They work beside a
//! running sidecar: SQLite serializes their writes with its own.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use creditgate::model::GrantRequest;
use creditgate::store::{StoreLocation, open_reader};
use creditgate::{Meter, MeterConfig, PolicySource};

#[derive(Args)]
pub struct LedgerFile {
    /// The ledger: a SQLite file, or `postgres://...`.
    #[arg(long, default_value = super::DEFAULT_DB)]
    db: StoreLocation,
    /// The policy naming the balances; defaults to the last one this ledger ran.
    #[arg(long)]
    policy: Option<PathBuf>,
}

impl LedgerFile {
    /// Opens the ledger with the given policy, or the one it last ran.
    fn open(&self) -> anyhow::Result<Meter> {
        let component = match &self.policy {
            Some(path) => super::read_policy(path)?,
            None => open_reader(&self.db)?
                .latest_policy()?
                .and_then(|stored| stored.component)
                .with_context(|| {
                    format!(
                        "{} has never run a policy component; pass --policy FILE.wasm",
                        self.db.describe()
                    )
                })?,
        };
        let mut config = MeterConfig::new(self.db.clone());
        // An operator command must not release anyone's holds behind the server's back.
        config.sweep_interval_ms = 0;
        Ok(Meter::open(config, PolicySource::Component(component))?)
    }
}

#[derive(Args)]
pub struct GrantArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
    balance: String,
    /// Whole credits, > 0.
    amount: i64,
    /// Idempotency key: a repeated grant with the same id moves nothing.
    #[arg(long)]
    grant_id: Option<String>,
}

pub fn grant(args: GrantArgs) -> anyhow::Result<()> {
    let meter = args.ledger.open()?;
    let grant_id = args
        .grant_id
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
    let balances = meter.grant(GrantRequest {
        grant_id: grant_id.clone(),
        tenant: args.tenant,
        balance: args.balance,
        amount: args.amount,
    })?;
    println!("grant {grant_id} applied");
    print_balances(&balances);
    Ok(())
}

#[derive(Args)]
pub struct BalanceArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
}

pub fn balance(args: BalanceArgs) -> anyhow::Result<()> {
    let meter = args.ledger.open()?;
    print_balances(&meter.balances(&args.tenant)?);
    Ok(())
}

#[derive(Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
    /// Journal entries to show, oldest first.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

pub fn ledger(args: LedgerArgs) -> anyhow::Result<()> {
    let meter = args.ledger.open()?;
    println!(
        "{:>8}  {:<14}  {:<38}  {:<12}  {:<8}  {:>10}  policy",
        "entry", "at_ms", "transaction", "balance", "kind", "amount"
    );
    for entry in meter.journal(&args.tenant, args.limit)? {
        println!(
            "{:>8}  {:<14}  {:<38}  {:<12}  {:<8}  {:>10}  {}",
            entry.id,
            entry.at_ms,
            entry.transaction_id,
            entry.balance,
            entry.kind,
            entry.amount,
            entry
                .policy_digest
                .get(..12)
                .unwrap_or(&entry.policy_digest)
        );
    }
    print_balances(&meter.balances(&args.tenant)?);
    let violations = meter.invariant_violations()?;
    if violations.is_empty() {
        println!("journal check: every account equals the sum of its entries");
        Ok(())
    } else {
        anyhow::bail!("journal check failed:\n{}", violations.join("\n"))
    }
}

fn print_balances(balances: &creditgate::model::TenantBalances) {
    for (balance, available) in &balances.balances {
        let held = balances.held.get(balance).copied().unwrap_or(0);
        println!(
            "{} {balance}: {available} available, {held} held",
            balances.tenant
        );
    }
}
