//! Operator commands on a ledger: grant, limits, caps, refills, thresholds, the event
//! feed, balance, ledger. A SQLite ledger has one
//! owner: beside a running sidecar they go through its API (the ledger's lock file says
//! where it listens); otherwise they open the ledger themselves. On PostgreSQL they open
//! it as one more replica. Either way they never record anything about policies: the
//! ledger's active policy names the balances.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use creditgate::model::{
    EventPage, GrantRequest, GrantTerms, JournalEntry, LevelTerms, LotView, RefillRequest,
    RefillView, SpendCapTerms, TenantBalances, ThresholdTerms,
};
use creditgate::store::StoreLocation;
use creditgate::store::sqlite::lock;
use creditgate::{Meter, MeterConfig, PolicySource};

#[derive(Args)]
pub struct LedgerFile {
    /// The ledger: a SQLite file, or `postgres://...`.
    #[arg(long, default_value = super::DEFAULT_DB)]
    db: StoreLocation,
    /// The admin token of the sidecar that owns the ledger, if one runs.
    #[arg(long, env = "CREDITGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// Where an operator command is carried out.
enum Ledger {
    /// This process opened the ledger (boxed: a meter is a few hundred bytes).
    Here(Box<Meter>),
    /// A sidecar owns it: through its API.
    Sidecar { url: String, token: Option<String> },
}

impl LedgerFile {
    fn open(&self) -> anyhow::Result<Ledger> {
        if let StoreLocation::Sqlite(path) = &self.db
            && let Some(owner) = lock::owner(path)
        {
            let url = owner.url.with_context(|| {
                format!(
                    "{} is open in creditgate process {}, which serves no API; stop it first",
                    path.display(),
                    owner.pid
                )
            })?;
            return Ok(Ledger::Sidecar {
                url,
                token: self.admin_token.clone(),
            });
        }
        let mut config = MeterConfig::new(self.db.clone());
        // An operator command records nothing about policies, and must not release
        // anyone's holds behind the sidecar's back.
        config.record_start = false;
        config.replica_name = None;
        config.sweep_interval_ms = 0;
        let meter = Meter::open(config, PolicySource::Resume { fallback: None })
            .with_context(|| format!("cannot open {}", self.db.describe()))?;
        Ok(Ledger::Here(Box::new(meter)))
    }
}

impl Ledger {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let Ledger::Sidecar { url, token } = self else {
            anyhow::bail!("not a sidecar");
        };
        let mut request = ureq::request(method, &format!("{}{path}", url.trim_end_matches('/')));
        if let Some(token) = token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok(response.into_json()?),
            Err(ureq::Error::Status(status, response)) => {
                let body: Value = response.into_json().unwrap_or_default();
                anyhow::bail!(
                    "the sidecar at {url} refused ({status} {}): {}",
                    body["error"]["code"].as_str().unwrap_or("?"),
                    body["error"]["message"].as_str().unwrap_or("")
                )
            }
            Err(error) => Err(error).with_context(|| format!("cannot reach the sidecar at {url}")),
        }
    }

    fn grant(&self, grant: GrantRequest) -> anyhow::Result<TenantBalances> {
        match self {
            Ledger::Here(meter) => Ok(meter.grant(grant)?),
            Ledger::Sidecar { .. } => Ok(serde_json::from_value(self.call(
                "POST",
                &format!("/v1/tenants/{}/grants", grant.tenant),
                Some({
                    let mut body = serde_json::to_value(&grant.terms)?;
                    body["grant_id"] = grant.grant_id.into();
                    body["balance"] = grant.balance.into();
                    body["amount"] = grant.amount.into();
                    body
                }),
            )?)?),
        }
    }

    fn set_overdraft(
        &self,
        tenant: &str,
        balance: &str,
        limit: i64,
    ) -> anyhow::Result<TenantBalances> {
        match self {
            Ledger::Here(meter) => Ok(meter.set_overdraft(tenant, balance, limit)?),
            Ledger::Sidecar { .. } => Ok(serde_json::from_value(self.call(
                "PUT",
                &format!("/v1/tenants/{tenant}/balances/{balance}/overdraft"),
                Some(serde_json::json!({ "limit": limit })),
            )?)?),
        }
    }

    /// An operator's setting through the sidecar: `PUT` with its terms, or `DELETE`
    /// without.
    fn setting<T: DeserializeOwned>(
        &self,
        path: &str,
        terms: Option<impl Serialize>,
    ) -> anyhow::Result<T> {
        let answer = match terms {
            Some(terms) => self.call("PUT", path, Some(serde_json::to_value(terms)?))?,
            None => self.call("DELETE", path, None)?,
        };
        Ok(serde_json::from_value(answer)?)
    }

    fn set_spend_cap(
        &self,
        tenant: &str,
        balance: &str,
        cap: Option<&SpendCapTerms>,
    ) -> anyhow::Result<TenantBalances> {
        match self {
            Ledger::Here(meter) => Ok(meter.set_spend_cap(tenant, balance, cap)?),
            Ledger::Sidecar { .. } => self.setting(
                &format!("/v1/tenants/{tenant}/balances/{balance}/spend-cap"),
                cap,
            ),
        }
    }

    fn set_thresholds(
        &self,
        tenant: &str,
        balance: &str,
        thresholds: Option<&ThresholdTerms>,
    ) -> anyhow::Result<TenantBalances> {
        match self {
            Ledger::Here(meter) => Ok(meter.set_thresholds(tenant, balance, thresholds)?),
            Ledger::Sidecar { .. } => self.setting(
                &format!("/v1/tenants/{tenant}/balances/{balance}/thresholds"),
                thresholds,
            ),
        }
    }

    fn set_refill(
        &self,
        tenant: &str,
        refill_id: &str,
        refill: Option<&RefillRequest>,
    ) -> anyhow::Result<Vec<RefillView>> {
        match self {
            Ledger::Here(meter) => Ok(meter.set_refill(tenant, refill_id, refill)?),
            Ledger::Sidecar { .. } => {
                self.setting(&format!("/v1/tenants/{tenant}/refills/{refill_id}"), refill)
            }
        }
    }

    /// A page of the event feed, waiting up to `wait` for the first event.
    fn events(
        &self,
        after: u64,
        limit: usize,
        tenant: Option<&str>,
        wait: Duration,
    ) -> anyhow::Result<EventPage> {
        match self {
            Ledger::Here(meter) => Ok(meter.events(after, limit, tenant, wait)?),
            Ledger::Sidecar { .. } => {
                let tenant = tenant.map_or_else(String::new, |tenant| format!("&tenant={tenant}"));
                Ok(serde_json::from_value(self.call(
                    "GET",
                    &format!(
                        "/v1/events?after={after}&limit={limit}&wait_ms={}{tenant}",
                        wait.as_millis()
                    ),
                    None,
                )?)?)
            }
        }
    }

    fn balances(&self, tenant: &str) -> anyhow::Result<TenantBalances> {
        match self {
            Ledger::Here(meter) => Ok(meter.balances(tenant)?),
            Ledger::Sidecar { .. } => Ok(serde_json::from_value(self.call(
                "GET",
                &format!("/v1/tenants/{tenant}/balances"),
                None,
            )?)?),
        }
    }

    /// The balances with their lots.
    fn lots(&self, tenant: &str) -> anyhow::Result<TenantBalances> {
        match self {
            Ledger::Here(meter) => Ok(meter.lots(tenant)?),
            Ledger::Sidecar { .. } => Ok(serde_json::from_value(self.call(
                "GET",
                &format!("/v1/tenants/{tenant}/balances?lots=true"),
                None,
            )?)?),
        }
    }

    fn journal(&self, tenant: &str, limit: usize) -> anyhow::Result<Vec<JournalEntry>> {
        match self {
            Ledger::Here(meter) => Ok(meter.journal(tenant, limit)?),
            Ledger::Sidecar { .. } => Ok(serde_json::from_value(
                self.call(
                    "GET",
                    &format!("/v1/tenants/{tenant}/journal?limit={limit}"),
                    None,
                )?["entries"]
                    .take(),
            )?),
        }
    }

    fn violations(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Ledger::Here(meter) => Ok(meter.invariant_violations()?),
            Ledger::Sidecar { .. } => Ok(serde_json::from_value(
                self.call("GET", "/v1/audit", None)?["violations"].take(),
            )?),
        }
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
    /// When the grant takes effect, in ms since the Unix epoch: until then it adds
    /// nothing (it is listed as scheduled); a time already past grants at once.
    #[arg(long)]
    effective_at_ms: Option<i64>,
    /// When the unspent credits expire, in ms since the Unix epoch.
    #[arg(long)]
    expires_at_ms: Option<i64>,
    /// Lots burn lowest priority first (then soonest expiry, then oldest).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Free text: `paid` (the default), `promotional`, ...
    #[arg(long)]
    category: Option<String>,
    /// `KEY=VALUE`, repeatable (at most 16).
    #[arg(long = "metadata", value_parser = key_value)]
    metadata: Vec<(String, String)>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))
}

pub fn grant(args: GrantArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    let grant_id = args
        .grant_id
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
    let balances = ledger.grant(GrantRequest {
        grant_id: grant_id.clone(),
        tenant: args.tenant,
        balance: args.balance,
        amount: args.amount,
        terms: GrantTerms {
            effective_at_ms: args.effective_at_ms,
            expires_at_ms: args.expires_at_ms,
            priority: args.priority,
            category: args.category,
            metadata: args.metadata.into_iter().collect(),
        },
    })?;
    match args.effective_at_ms {
        Some(at_ms) => println!("grant {grant_id} recorded: it takes effect at {at_ms} ms"),
        None => println!("grant {grant_id} applied"),
    }
    print_balances(&balances);
    Ok(())
}

#[derive(Args)]
pub struct OverdraftArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
    balance: String,
    /// How far below zero spending may take the balance, in whole credits (0: not at all).
    limit: i64,
}

pub fn overdraft(args: OverdraftArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    let balances = ledger.set_overdraft(&args.tenant, &args.balance, args.limit)?;
    println!(
        "overdraft limit of {}/{} set to {}",
        args.tenant, args.balance, args.limit
    );
    print_balances(&balances);
    Ok(())
}

#[derive(Args)]
pub struct SpendCapArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
    balance: String,
    /// Credits held or charged per window (0: refuse every admission that spends).
    #[arg(required_unless_present = "remove")]
    cap: Option<i64>,
    /// `hour`, `day` or `month` of the time zone's calendar.
    #[arg(long, default_value = "day")]
    window: String,
    /// The IANA time zone whose calendar the windows follow.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// Remove the balance's cap instead.
    #[arg(long, conflicts_with = "cap")]
    remove: bool,
}

pub fn spend_cap(args: SpendCapArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    let terms = args.cap.map(|cap| SpendCapTerms {
        cap,
        window: args.window.clone(),
        time_zone: args.time_zone.clone(),
    });
    let balances = ledger.set_spend_cap(&args.tenant, &args.balance, terms.as_ref())?;
    match &terms {
        Some(terms) => println!(
            "spend cap of {}/{} set to {} per {} ({})",
            args.tenant, args.balance, terms.cap, terms.window, terms.time_zone
        ),
        None => println!("spend cap of {}/{} removed", args.tenant, args.balance),
    }
    print_balances(&balances);
    Ok(())
}

#[derive(Args)]
pub struct ThresholdsArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
    balance: String,
    /// A level in credits: `balance_low` when available credits fall below it
    /// (repeatable).
    #[arg(long = "credits", value_name = "CREDITS")]
    credits: Vec<i64>,
    /// A level in percent (1 to 100) of the balance's latest grant (repeatable).
    #[arg(long = "percent", value_name = "PERCENT")]
    percent: Vec<u8>,
    /// Raise `lot_expiring` this many ms before a lot with credits left expires.
    #[arg(long, value_name = "MS")]
    lot_expiring_lead_ms: Option<i64>,
    /// Stop watching the balance instead.
    #[arg(long, conflicts_with_all = ["credits", "percent", "lot_expiring_lead_ms"])]
    remove: bool,
}

pub fn thresholds(args: ThresholdsArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    let terms = (!args.remove).then(|| ThresholdTerms {
        levels: args
            .credits
            .iter()
            .map(|credits| LevelTerms::Credits(*credits))
            .chain(
                args.percent
                    .iter()
                    .map(|percent| LevelTerms::Percent(*percent)),
            )
            .collect(),
        lot_expiring_lead_ms: args.lot_expiring_lead_ms,
    });
    let balances = ledger.set_thresholds(&args.tenant, &args.balance, terms.as_ref())?;
    match &terms {
        Some(_) => println!("{}/{} is watched", args.tenant, args.balance),
        None => println!("{}/{} is no longer watched", args.tenant, args.balance),
    }
    print_balances(&balances);
    Ok(())
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    /// Start after this event id (0: from the first).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Events per page, 1 to 1,000.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep reading: wait for the next events (long-poll) until interrupted.
    #[arg(long)]
    follow: bool,
}

/// How long `--follow` waits per read.
const FOLLOW_WAIT: Duration = Duration::from_secs(25);

/// Prints the event feed as JSON lines, one event per line.
pub fn events(args: EventsArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    let mut after = args.after;
    loop {
        let wait = if args.follow {
            FOLLOW_WAIT
        } else {
            Duration::ZERO
        };
        let page = ledger.events(after, args.limit, args.tenant.as_deref(), wait)?;
        for event in &page.events {
            println!("{}", serde_json::to_string(event)?);
        }
        after = page.next_after;
        if !args.follow && page.events.len() < args.limit {
            return Ok(());
        }
    }
}

#[derive(Args)]
pub struct RefillArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
    refill_id: String,
    /// The balance the refill grants to.
    #[arg(required_unless_present = "remove")]
    balance: Option<String>,
    /// Credits each period grants (rollover: at most).
    #[arg(required_unless_present = "remove")]
    amount: Option<i64>,
    /// `hour`, `day`, `month`, or `N hours|days|months`.
    #[arg(long, default_value = "month")]
    every: String,
    /// The IANA time zone whose calendar the periods follow.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// When the first period starts, in ms since the Unix epoch (default: now, or the
    /// refill's anchor if it exists).
    #[arg(long)]
    anchor_ms: Option<i64>,
    /// `reset` (a period's unspent credits expire) or `rollover` (they stay, up to
    /// --rollover-cap).
    #[arg(long, default_value = "reset")]
    mode: String,
    #[arg(long)]
    rollover_cap: Option<i64>,
    /// The lots' burn priority (lower burns first).
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// The lots' category.
    #[arg(long)]
    category: Option<String>,
    /// Remove the refill instead (its lots stay).
    #[arg(long, conflicts_with_all = ["balance", "amount"])]
    remove: bool,
}

pub fn refill(args: RefillArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    let request = args
        .balance
        .clone()
        .zip(args.amount)
        .map(|(balance, amount)| RefillRequest {
            balance,
            amount,
            every: args.every.clone(),
            time_zone: args.time_zone.clone(),
            anchor_ms: args.anchor_ms,
            mode: args.mode.clone(),
            rollover_cap: args.rollover_cap,
            priority: args.priority,
            category: args.category.clone(),
        });
    let refills = ledger.set_refill(&args.tenant, &args.refill_id, request.as_ref())?;
    match &request {
        Some(_) => println!("refill {} of {} set", args.refill_id, args.tenant),
        None => println!("refill {} of {} removed", args.refill_id, args.tenant),
    }
    for refill in refills {
        let cap = refill
            .rollover_cap
            .map(|cap| format!(" up to {cap}"))
            .unwrap_or_default();
        println!(
            "{} {}: {} credits on {} every {} ({}), {}{cap}; last period {}, next {}",
            args.tenant,
            refill.refill_id,
            refill.amount,
            refill.balance,
            refill.every,
            refill.time_zone,
            refill.mode,
            refill
                .last_start_ms
                .map_or("none".to_owned(), |at| format!("at {at} ms")),
            refill
                .next_start_ms
                .map_or("none".to_owned(), |at| format!("at {at} ms")),
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct BalanceArgs {
    #[command(flatten)]
    ledger: LedgerFile,
    tenant: String,
}

pub fn balance(args: BalanceArgs) -> anyhow::Result<()> {
    let ledger = args.ledger.open()?;
    print_balances(&ledger.balances(&args.tenant)?);
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
    let ledger = args.ledger.open()?;
    println!(
        "{:>8}  {:<14}  {:<38}  {:<12}  {:<10}  {:>10}  {:>8}  policy",
        "entry", "at_ms", "transaction", "balance", "kind", "amount", "lot"
    );
    for entry in ledger.journal(&args.tenant, args.limit)? {
        println!(
            "{:>8}  {:<14}  {:<38}  {:<12}  {:<10}  {:>10}  {:>8}  {}",
            entry.id,
            entry.at_ms,
            entry.transaction_id,
            entry.balance,
            entry.kind,
            entry.amount,
            entry.lot.map_or("-".to_owned(), |lot| lot.to_string()),
            entry
                .policy_digest
                .get(..12)
                .unwrap_or(&entry.policy_digest)
        );
    }
    let balances = ledger.lots(&args.tenant)?;
    print_balances(&balances);
    print_lots(&balances);
    let violations = ledger.violations()?;
    if violations.is_empty() {
        println!(
            "journal check: every account equals the sum of its entries, every lot the sum of the entries naming it, and no account's lots hold more than it has"
        );
        Ok(())
    } else {
        anyhow::bail!("journal check failed:\n{}", violations.join("\n"))
    }
}

/// The lots, in burn order per balance, then the grants that take effect later.
fn print_lots(balances: &TenantBalances) {
    print_granted_lots(balances.lots.as_deref().unwrap_or_default());
    let scheduled = balances.scheduled.as_deref().unwrap_or_default();
    if scheduled.is_empty() {
        return;
    }
    println!(
        "{:<24}  {:<12}  {:>10}  {:<8}  {:>16}  {:>8}  {:<14}  {:<12}",
        "scheduled grant",
        "balance",
        "amount",
        "state",
        "effective_at_ms",
        "priority",
        "expires_at_ms",
        "category"
    );
    for grant in scheduled {
        println!(
            "{:<24}  {:<12}  {:>10}  {:<8}  {:>16}  {:>8}  {:<14}  {:<12}",
            grant.grant_id,
            grant.balance,
            grant.amount,
            grant.state,
            grant.effective_at_ms,
            grant.priority,
            grant
                .expires_at_ms
                .map_or("-".to_owned(), |at| at.to_string()),
            grant.category
        );
    }
}

fn print_granted_lots(lots: &[LotView]) {
    if lots.is_empty() {
        return;
    }
    println!(
        "{:>8}  {:<24}  {:<12}  {:>10}  {:>10}  {:<8}  {:>8}  {:<14}  {:<12}",
        "lot",
        "grant",
        "balance",
        "amount",
        "remaining",
        "state",
        "priority",
        "expires_at_ms",
        "category"
    );
    for lot in lots {
        println!(
            "{:>8}  {:<24}  {:<12}  {:>10}  {:>10}  {:<8}  {:>8}  {:<14}  {:<12}",
            lot.lot,
            lot.grant_id,
            lot.balance,
            lot.amount,
            lot.remaining,
            lot.state,
            lot.priority,
            lot.expires_at_ms
                .map_or("-".to_owned(), |at| at.to_string()),
            lot.category
        );
    }
}

fn print_balances(balances: &TenantBalances) {
    for (balance, available) in &balances.balances {
        let held = balances.held.get(balance).copied().unwrap_or(0);
        let overdraft = balances
            .overdraft_limits
            .get(balance)
            .map(|limit| format!(", overdraft limit {limit}"))
            .unwrap_or_default();
        let cap = balances
            .spend_caps
            .get(balance)
            .map(|cap| {
                format!(
                    ", spend cap {} per {} ({}): {} spent, resets at {} ms",
                    cap.cap, cap.window, cap.time_zone, cap.spent, cap.resets_at_ms
                )
            })
            .unwrap_or_default();
        let watched = balances
            .thresholds
            .get(balance)
            .map(|thresholds| {
                format!(
                    ", watched: {}",
                    serde_json::to_string(thresholds).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        println!(
            "{} {balance}: {available} available, {held} held{overdraft}{cap}{watched}",
            balances.tenant
        );
    }
}
