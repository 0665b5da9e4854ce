//! The decisions: authorize, settle, grant, expiry and activation as functions over the
//! live state. Each asks the policy (through the registry), applies the ledger's posting
//! rules, records one [`Decision`] in the batch being built, applies it to the state
//! (the same function replay uses) and returns the typed answer. No threads, no store
//! writes: unit tests call them on a [`LiveState`] directly.
//!
//! Every check that can refuse a request runs before the decision is recorded, so a
//! refused request leaves the state and the batch as they were.

use std::collections::{BTreeMap, HashMap};

use super::failure::{Exposure, FailureCounts, FailurePolicy};
use super::registry::Registry;
use crate::error::MeterError;
use crate::ledger::calendar::{Cadence, CalendarError};
use crate::ledger::caps::{
    self, CapReached, CapTerms, CapWindow, Counted, SpendCap, SpendCaps, Windows,
};
use crate::ledger::draw::{DrawnPosting, LotDraw, draw};
use crate::ledger::events::EventKind;
use crate::ledger::lots::{Closure, LEGACY_LOT, Lot, LotId};
use crate::ledger::record::{
    Activation, AuthorizationRecord, Authorized, Batch, Decision, Expired, Granted, MarkRecord,
    PolicyRecord, PostingRecord, ReceiptRecord, RequestRecord, Settled, TransactionState,
};
use crate::ledger::record::{
    CapSet, DEFAULT_CATEGORY, LotClosed, LotTerms, OverdraftSet, RefillSet, Spent,
};
use crate::ledger::refills::{self, Refill, RefillMode, RefillTerms};
use crate::ledger::state::GrantRecord;
use crate::ledger::state::{LiveState, TransactionRecord};
use crate::ledger::{
    AccountRules, AccountState, Accounts, Entry, EntryKind, overdraft_limit, post_authorize,
    post_expiry, post_settle,
};
use crate::model::{
    Amounts, Authorization, AuthorizeRequest, ErrorBody, GrantRequest, GrantTerms, LotView,
    PolicyRef, Receipt, RefillView, SettleRequest, SpendCapView, TenantBalances,
};
use crate::policy::{AuthorizeDecision, PolicyDigest, PolicyInfo, SettleDecision, sdk};
use crate::store::ColdStore;

mod events;
mod scheduled;

/// An authorize request checked on the caller's thread: valid, with its id and
/// fingerprint.
#[derive(Debug, Clone)]
pub struct CheckedAuthorize {
    pub id: String,
    pub request: AuthorizeRequest,
    pub fingerprint: [u8; 32],
}

/// What an authorize is for: to admit (the decision is applied and recorded) or to
/// quote (the same answer, with nothing applied or recorded: no hold, no mark, no log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pricing {
    Admit,
    Quote,
}

/// The batch being built: its header and the decisions so far.
pub struct BatchBuilder {
    pub batch: Batch,
    policy_index: HashMap<[u8; 32], u32>,
    /// Each watched account the batch moved, with its `available` before the batch
    /// first moved it: compared with the batch's end for threshold events.
    watched_before: BTreeMap<(String, String), i64>,
}

impl BatchBuilder {
    pub fn new(seq: u64, at_ms: u64, first_entry_id: u64) -> Self {
        Self {
            batch: Batch {
                seq,
                at_ms,
                first_entry_id,
                ..Batch::default()
            },
            policy_index: HashMap::new(),
            watched_before: BTreeMap::new(),
        }
    }

    /// The index of `digest` in the batch's policy list.
    fn policy(&mut self, digest: &PolicyDigest) -> u32 {
        let bytes = digest.bytes();
        let next = self.batch.policies.len() as u32;
        *self.policy_index.entry(bytes).or_insert_with(|| {
            self.batch.policies.push(bytes);
            next
        })
    }

    /// Records a decision: checks its lots against the state (L1, L2 of
    /// `docs/credits.md`), applies it, then keeps it for the log.
    fn record(&mut self, state: &mut LiveState, decision: Decision) -> Result<(), MeterError> {
        if let Some((tenant, posting)) = decision.posting() {
            state.check_posting(tenant, posting).map_err(|why| {
                MeterError::StoreCorrupt(format!("a decision breaks a lot invariant: {why}"))
            })?;
            if state.is_watched(tenant) {
                for (balance, _) in &posting.accounts {
                    let key = (tenant.to_owned(), balance.clone());
                    if state.watch(tenant, balance).is_some()
                        && !self.watched_before.contains_key(&key)
                    {
                        let before = state
                            .accounts(tenant, std::slice::from_ref(balance))
                            .get(balance)
                            .map_or(0, |account| account.available);
                        self.watched_before.insert(key, before);
                    }
                }
            }
        }
        state.apply(&self.batch, &decision)?;
        self.batch.decisions.push(decision);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.batch.decisions.is_empty()
    }
}

/// What every decision works with.
pub struct Decider<'a> {
    pub state: &'a mut LiveState,
    pub store: &'a dyn ColdStore,
    pub registry: &'a mut Registry,
    pub builder: &'a mut BatchBuilder,
    /// What an authorize does when its policy fails, and how often it did.
    pub failure: &'a FailurePolicy,
    pub failure_counts: &'a FailureCounts,
}

pub fn policy_ref(info: &PolicyInfo) -> PolicyRef {
    PolicyRef {
        name: info.name.clone(),
        version: info.version.clone(),
        digest: info.digest.to_string(),
    }
}

/// Each described balance as the policy sees it: available credits, overdraft limit
/// and spend cap with the current window's spending.
fn available(
    accounts: &Accounts,
    rules: &AccountRules,
    now_ms: i64,
    balances: &[String],
) -> Vec<sdk::BalanceState> {
    balances
        .iter()
        .map(|balance| sdk::BalanceState {
            balance: balance.clone(),
            available: accounts.get(balance).map_or(0, |account| account.available),
            overdraft_limit: overdraft_limit(&rules.overdraft, balance),
            spend_cap: rules.caps.get(balance).map(|capped| {
                let window = capped.now(now_ms);
                sdk::SpendWindow {
                    cap: capped.cap.terms.cap,
                    spent: window.spent,
                    resets_at_ms: window.resets_at_ms,
                }
            }),
        })
        .collect()
}

/// The spend caps of the described balances, with their current windows.
fn cap_views(
    caps: &SpendCaps,
    now_ms: i64,
    balances: &[String],
) -> std::collections::BTreeMap<String, SpendCapView> {
    caps.iter()
        .filter(|(balance, _)| balances.contains(balance))
        .map(|(balance, capped)| {
            let window = capped.now(now_ms);
            let terms = &capped.cap.terms;
            (
                balance.clone(),
                SpendCapView {
                    cap: terms.cap,
                    window: terms.window.as_str().to_owned(),
                    time_zone: terms.time_zone.clone(),
                    spent: window.spent,
                    resets_at_ms: window.resets_at_ms,
                },
            )
        })
        .collect()
}

/// Available credits per described balance, for answers.
pub fn available_amounts(accounts: &Accounts, balances: &[String]) -> Amounts {
    balances
        .iter()
        .map(|balance| {
            (
                balance.clone(),
                accounts.get(balance).map_or(0, |account| account.available),
            )
        })
        .collect()
}

pub fn tenant_balances(
    tenant: &str,
    accounts: &Accounts,
    rules: &AccountRules,
    now_ms: i64,
    balances: &[String],
) -> TenantBalances {
    TenantBalances {
        lots: None,
        scheduled: None,
        spend_caps: cap_views(&rules.caps, now_ms, balances),
        thresholds: rules
            .thresholds
            .iter()
            .filter(|(balance, _)| balances.contains(balance))
            .map(|(balance, thresholds)| (balance.clone(), thresholds.into()))
            .collect(),
        overdraft_limits: rules
            .overdraft
            .iter()
            .filter(|(balance, _)| balances.contains(balance))
            .map(|(balance, limit)| (balance.clone(), *limit))
            .collect(),
        tenant: tenant.to_owned(),
        balances: available_amounts(accounts, balances),
        held: balances
            .iter()
            .map(|balance| {
                (
                    balance.clone(),
                    accounts.get(balance).map_or(0, |account| account.held),
                )
            })
            .collect(),
    }
}

/// A grant's terms as the record keeps them.
pub fn lot_terms(terms: &GrantTerms) -> LotTerms {
    LotTerms {
        expires_at_ms: terms.expires_at_ms,
        priority: terms.priority,
        category: terms
            .category
            .clone()
            .unwrap_or_else(|| DEFAULT_CATEGORY.to_owned()),
        metadata: pairs(&terms.metadata),
    }
}

/// The record of a posting drawn on lots.
fn posting_record(drawn: DrawnPosting) -> PostingRecord {
    PostingRecord {
        entries: drawn.entries,
        accounts: accounts_after(&drawn.accounts),
        lots: drawn.lots,
    }
}

/// The accounts a decision leaves, for the record: `balances` plus any it touched.
fn accounts_after(accounts: &Accounts) -> Vec<(String, AccountState)> {
    accounts
        .iter()
        .map(|(balance, state)| (balance.clone(), *state))
        .collect()
}

fn mark_records(marks: &[sdk::Mark]) -> Vec<MarkRecord> {
    marks
        .iter()
        .map(|mark| MarkRecord {
            scope: mark.scope.clone(),
            key: mark.key.clone(),
        })
        .collect()
}

fn pairs(attributes: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// What settle will hand back to the policy.
fn request_record(request: &AuthorizeRequest) -> RequestRecord {
    RequestRecord {
        items: request.items.clone(),
        attributes: pairs(&request.attributes),
        body: request.body.clone(),
    }
}

/// A refill as the API shows it.
fn refill_view(refill_id: &str, refill: &Refill) -> RefillView {
    let terms = &refill.terms;
    let (count, unit) = match terms.every {
        Cadence::Hours(count) => (count, "hour"),
        Cadence::Days(count) => (count, "day"),
        Cadence::Months(count) => (count, "month"),
    };
    let (mode, rollover_cap) = match terms.mode {
        RefillMode::Reset => ("reset", None),
        RefillMode::Rollover { cap } => ("rollover", Some(cap)),
    };
    RefillView {
        refill_id: refill_id.to_owned(),
        balance: terms.balance.clone(),
        amount: terms.amount,
        every: if count == 1 {
            unit.to_owned()
        } else {
            format!("{count} {unit}s")
        },
        time_zone: terms.time_zone.clone(),
        anchor_ms: terms.anchor_ms,
        mode: mode.to_owned(),
        rollover_cap,
        priority: terms.priority,
        category: terms.category.clone(),
        last_start_ms: refill.last_start_ms,
        next_start_ms: refill.next_start_ms().ok(),
    }
}

fn calendar_failed(error: CalendarError) -> MeterError {
    MeterError::StoreCorrupt(format!("a spend window could not be computed: {error}"))
}

/// Counts an admission on the tenant's capped balances, or names the cap it would pass.
fn count_admission(
    caps: &SpendCaps,
    now_ms: i64,
    held: &Amounts,
    charged: &Amounts,
) -> Result<Counted, MeterError> {
    if caps.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    caps::count_admission(caps, now_ms, held, charged).map_err(calendar_failed)
}

/// The host's refusal of an admission that would pass a spend cap: 429 with the
/// window's figures in `meta.spend_cap_reached` and a `retry-after` header.
fn cap_refusal(
    mut refused: Authorization,
    now_ms: i64,
    balance: &str,
    reached: CapReached,
) -> Authorization {
    let CapReached {
        cap,
        spent,
        asked,
        resets_at_ms,
        ..
    } = reached;
    let retry_after_s = (resets_at_ms.saturating_sub(now_ms).max(0) + 999) / 1000;
    refused.error = Some(ErrorBody {
        code: "spend_cap_reached".to_owned(),
        message: format!(
            "Spend cap reached: '{balance}' may spend {cap} credits per window and has spent \
             {spent} in this one; this request needs {asked}. The window resets at \
             {resets_at_ms} ms, in {retry_after_s} s."
        ),
    });
    refused.meta = serde_json::json!({
        "spend_cap_reached": {
            "balance": balance,
            "cap": cap,
            "spent": spent,
            "asked": asked,
            "resets_at_ms": resets_at_ms,
        }
    });
    refused
        .headers
        .insert("retry-after".to_owned(), retry_after_s.to_string());
    refused
}

fn to_policy_amounts(amounts: &[(String, i64)]) -> Vec<sdk::BalanceAmount> {
    amounts
        .iter()
        .map(|(balance, amount)| sdk::BalanceAmount::new(balance.clone(), *amount))
        .collect()
}

impl Decider<'_> {
    /// The clock reading of the batch being built, which every decision of it is made at.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.builder.batch.at_ms).unwrap_or(i64::MAX)
    }

    /// What closing a hold taken at `taken_at_ms` does to the tenant's spend windows.
    fn count_close(
        &self,
        caps: &SpendCaps,
        taken_at_ms: i64,
        held: &Amounts,
        charged: &Amounts,
    ) -> Result<Windows, MeterError> {
        if caps.is_empty() {
            return Ok(Vec::new());
        }
        caps::count_close(caps, self.now_ms(), taken_at_ms, held, charged).map_err(calendar_failed)
    }

    /// Records the spend windows a decision just recorded moved, if any.
    fn record_windows(&mut self, tenant: &str, windows: Windows) -> Result<(), MeterError> {
        if windows.is_empty() {
            return Ok(());
        }
        self.builder.record(
            self.state,
            Decision::Spend(Spent {
                tenant: tenant.to_owned(),
                windows,
            }),
        )
    }

    /// Whether the ledger knows a transaction id; one it knows is in memory after
    /// (read from the store, unless the filter rules the id out, when not there yet).
    fn load_transaction(&mut self, id: &str) -> Result<bool, MeterError> {
        if self.state.transaction(id).is_some() {
            return Ok(true);
        }
        if !self.state.may_know_transaction(id) {
            return Ok(false);
        }
        match self.store.transaction(id)? {
            Some(record) => {
                self.state.load_transaction(record, 0);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn loaded(&self, id: &str) -> Result<&TransactionRecord, MeterError> {
        self.state.transaction(id).ok_or_else(|| {
            MeterError::StoreUnavailable(format!("transaction '{id}' left memory mid-decision"))
        })
    }

    /// The tenant's accounts, loading them when the state holds part of the ledger.
    fn accounts(&mut self, tenant: &str, balances: &[String]) -> Result<Accounts, MeterError> {
        if !self.state.has_tenant(tenant) {
            self.store.load_tenant(tenant, self.state)?;
        }
        Ok(self.state.accounts(tenant, balances))
    }

    /// Loads a version the registry lacks: its bytes are in memory when the batch that
    /// recorded it is not in the views yet, else in the store. Answers its description.
    fn policy(&mut self, digest: &PolicyDigest) -> Result<PolicyInfo, MeterError> {
        if let Some(info) = self.registry.info(digest) {
            return Ok(info.clone());
        }
        let bytes = match self.state.recent_component(&digest.bytes()) {
            Some(component) => component.map(<[u8]>::to_vec),
            None => {
                self.store
                    .policy(digest)?
                    .ok_or_else(|| {
                        MeterError::StoreCorrupt(format!("policy {digest} is not in the ledger"))
                    })?
                    .component
            }
        };
        let bytes = bytes.ok_or_else(|| {
            MeterError::StoreUnavailable(format!(
                "policy {digest} was linked natively and is not loaded in this process"
            ))
        })?;
        self.registry.load(&bytes)
    }

    /// The active policy's description, if it names `balance`.
    fn policy_with_balance(&mut self, balance: &str) -> Result<PolicyInfo, MeterError> {
        let info = self.policy(&self.registry.active())?;
        if !info.has_balance(balance) {
            return Err(MeterError::UnknownBalance {
                balance: balance.to_owned(),
                known: info.balances.join(", "),
            });
        }
        Ok(info)
    }

    /// Name, version and digest of a policy by digest, wherever it is known.
    fn policy_ref_of(&mut self, digest: &PolicyDigest) -> Result<PolicyRef, MeterError> {
        if let Some(info) = self.registry.info(digest) {
            return Ok(policy_ref(info));
        }
        if let Some(meta) = self.state.policy(&digest.bytes()) {
            return Ok(PolicyRef {
                name: meta.name.clone(),
                version: meta.version.clone(),
                digest: digest.to_string(),
            });
        }
        let stored = self.store.policy(digest)?.ok_or_else(|| {
            MeterError::StoreCorrupt(format!("policy {digest} is not in the ledger"))
        })?;
        Ok(stored.policy)
    }

    /// Decides an authorize on the live state: admits it (applies and records the
    /// decision) or quotes it (answers the same and records nothing). A quote does not
    /// feed the shadow, is not counted as a failure and is never admitted open.
    pub fn authorize(
        &mut self,
        checked: &CheckedAuthorize,
        pricing: Pricing,
    ) -> Result<Authorization, MeterError> {
        let CheckedAuthorize {
            id,
            request,
            fingerprint,
        } = checked;
        if self.load_transaction(id)? {
            let (same, policy) = {
                let existing = self.loaded(id)?;
                (existing.fingerprint == *fingerprint, existing.policy)
            };
            if !same {
                return Err(MeterError::TransactionConflict(id.clone()));
            }
            let policy = self.policy_ref_of(&PolicyDigest::from_bytes(policy))?;
            return Ok(self.loaded(id)?.authorization.answer(id, policy));
        }
        let active = self.registry.active();
        let info = self.policy(&active)?;
        let admitting = pricing == Pricing::Admit;
        if admitting {
            self.expire_lots_of(&request.tenant)?;
        }
        let accounts = self.accounts(&request.tenant, &info.balances)?;
        let rules = self.state.rules(&request.tenant);
        let now_ms = self.now_ms();
        let policy_request = sdk::Request {
            transaction_id: id.clone(),
            tenant: request.tenant.clone(),
            operation: request.operation.clone(),
            items: request.items.clone(),
            attributes: pairs(&request.attributes),
            body: request.body.clone(),
        };
        let balances = available(&accounts, &rules, now_ms, &info.balances);
        let decision = match self
            .registry
            .authorize(&active, &policy_request, &balances, admitting)
        {
            Ok(decision) => decision,
            Err(error) if !admitting => return Err(error),
            Err(error) => {
                let at_ms = self.builder.batch.at_ms;
                let spent =
                    |account: &str| accounts.get(account).map_or(0, |state| state.available);
                let opened = self
                    .failure
                    .open_admission(&request.operation, &error, at_ms, spent);
                if error.caused_by_policy() {
                    self.failure_counts.count(opened.is_some());
                }
                return match opened {
                    Some(exposure) => self.admit_open(checked, &info, accounts, exposure, &error),
                    None => Err(error),
                };
            }
        };

        let policy_ref = policy_ref(&info);
        let rejected = |status: u16, code: &str, message: &str| Authorization {
            transaction_id: id.clone(),
            admitted: false,
            status: Some(status),
            error: Some(ErrorBody {
                code: code.to_owned(),
                message: message.to_owned(),
            }),
            admitted_items: 0,
            held: Amounts::new(),
            charged: Amounts::new(),
            headers: Default::default(),
            meta: serde_json::Value::Object(serde_json::Map::new()),
            balances: available_amounts(&accounts, &info.balances),
            policy: policy_ref.clone(),
            failed_open: None,
        };
        let unchanged = || PostingRecord {
            accounts: accounts_after(&accounts),
            ..PostingRecord::default()
        };
        let mut windows = Vec::new();
        let mut cap_reached = None;
        let (authorization, request_record, expires_at_ms, posting, marks) = match decision {
            AuthorizeDecision::Reject {
                status,
                code,
                message,
            } => (
                rejected(status, &code, &message),
                None,
                None,
                unchanged(),
                Vec::new(),
            ),
            AuthorizeDecision::Admit {
                status,
                admitted_items,
                hold,
                charge,
                marks,
                headers,
                meta,
            } => match post_authorize(&accounts, &rules.overdraft, &hold, &charge) {
                // The host's guarantee, whatever the policy said: never below minus the
                // overdraft limit.
                Err(shortfall) => {
                    let overdraft = if shortfall.overdraft_limit > 0 {
                        format!(" and an overdraft of {}", shortfall.overdraft_limit)
                    } else {
                        String::new()
                    };
                    let message = format!(
                        "Insufficient credits: {} needed on '{}', {} available{overdraft}.",
                        shortfall.needed, shortfall.balance, shortfall.available
                    );
                    (
                        rejected(402, "insufficient_credits", &message),
                        None,
                        None,
                        unchanged(),
                        Vec::new(),
                    )
                }
                // The host's cap, whatever the policy said: a window's spending never
                // passes it (L6 of docs/credits.md).
                Ok(posting) => match count_admission(&rules.caps, now_ms, &hold, &charge)? {
                    Err((balance, reached)) => {
                        let refused = cap_refusal(
                            rejected(429, "spend_cap_reached", ""),
                            now_ms,
                            &balance,
                            reached,
                        );
                        cap_reached = Some((balance, reached));
                        (refused, None, None, unchanged(), Vec::new())
                    }
                    Ok(counted) => {
                        windows = counted;
                        let posting = draw(
                            self.state,
                            &request.tenant,
                            &accounts,
                            &rules.overdraft,
                            &posting.entries,
                            &[],
                        )?;
                        let expires_at_ms = (!hold.is_empty())
                            .then(|| self.builder.batch.at_ms.saturating_add(info.hold_ttl_ms));
                        let authorization = Authorization {
                            transaction_id: id.clone(),
                            admitted: true,
                            status,
                            error: None,
                            admitted_items,
                            held: hold,
                            charged: charge,
                            headers,
                            meta,
                            balances: available_amounts(&posting.accounts, &info.balances),
                            policy: policy_ref.clone(),
                            failed_open: None,
                        };
                        (
                            authorization,
                            Some(request_record(request)),
                            expires_at_ms,
                            posting_record(posting),
                            mark_records(&marks),
                        )
                    }
                },
            },
        };
        let answer = AuthorizationRecord::of(&authorization);
        // A refusal records its request too: what a replay asks another policy.
        let request_record = request_record.or_else(|| Some(self::request_record(request)));
        if expires_at_ms.is_some() {
            let bytes = id.len()
                + request_record.as_ref().map_or(0, |record| {
                    record.items.iter().map(String::len).sum::<usize>()
                        + record.body.as_ref().map_or(0, Vec::len)
                })
                + answer.meta_json.len()
                + 512;
            if !self.state.hold_fits(bytes) {
                let (holds, held_bytes) = self.state.open_holds();
                tracing::warn!(
                    holds,
                    held_bytes,
                    "open holds are at their limit; refusing an admission that would hold more"
                );
                return Err(MeterError::Overloaded);
            }
        }
        if !admitting {
            return Ok(authorization);
        }
        let policy = self.builder.policy(&active);
        self.builder.record(
            self.state,
            Decision::Authorize(Authorized {
                id: id.clone(),
                tenant: request.tenant.clone(),
                fingerprint: *fingerprint,
                policy,
                operation: request.operation.clone(),
                request: request_record,
                answer,
                expires_at_ms,
                posting,
                marks,
            }),
        )?;
        self.record_windows(&request.tenant, windows)?;
        if let Some((balance, reached)) = cap_reached {
            self.raise_cap_reached(&request.tenant, &balance, reached)?;
        }
        Ok(authorization)
    }

    /// Admits a request whose policy failed, unpriced, as the open failure mode says:
    /// every item admitted, nothing held or charged, and the exposure counted on the
    /// tenant's window account by an `open` entry.
    fn admit_open(
        &mut self,
        checked: &CheckedAuthorize,
        info: &PolicyInfo,
        accounts: Accounts,
        exposure: Exposure,
        failure: &MeterError,
    ) -> Result<Authorization, MeterError> {
        let CheckedAuthorize {
            id,
            request,
            fingerprint,
        } = checked;
        let entries = [Entry {
            balance: exposure.account.clone(),
            kind: EntryKind::Open,
            amount: exposure.credits,
        }];
        // Cannot fail: the window's room was checked against a cap that is an i64.
        let limits = self.state.overdraft_limits(&request.tenant);
        let posting = draw(
            self.state,
            &request.tenant,
            &accounts,
            &limits,
            &entries,
            &[],
        )?;
        let accounts = posting.accounts.clone();
        let authorization = Authorization {
            transaction_id: id.clone(),
            admitted: true,
            status: None,
            error: None,
            admitted_items: u32::try_from(request.items.len()).unwrap_or(u32::MAX),
            held: Amounts::new(),
            charged: Amounts::new(),
            headers: Default::default(),
            meta: serde_json::Value::Object(serde_json::Map::new()),
            balances: available_amounts(&accounts, &info.balances),
            policy: policy_ref(info),
            failed_open: Some(ErrorBody {
                code: failure.code().to_owned(),
                message: failure.to_string(),
            }),
        };
        let policy = self.builder.policy(&info.digest);
        self.builder.record(
            self.state,
            Decision::Authorize(Authorized {
                id: id.clone(),
                tenant: request.tenant.clone(),
                fingerprint: *fingerprint,
                policy,
                operation: request.operation.clone(),
                request: Some(request_record(request)),
                answer: AuthorizationRecord::of(&authorization),
                expires_at_ms: None,
                posting: posting_record(posting),
                marks: Vec::new(),
            }),
        )?;
        let spent = accounts
            .get(&exposure.account)
            .map_or(0, |account| account.available);
        tracing::debug!(tenant = %request.tenant, transaction = %id, code = failure.code(), spent, "admitted open");
        if spent.saturating_add(exposure.credits) > self.failure.open_credits_per_tenant_per_hour {
            tracing::warn!(
                tenant = %request.tenant,
                window = %exposure.account,
                spent,
                "the tenant's failure-open exposure window is full: its policy failures fail closed until the window rolls over"
            );
        }
        Ok(authorization)
    }

    pub fn settle(&mut self, request: &SettleRequest) -> Result<Receipt, MeterError> {
        let id = &request.transaction_id;
        if !self.load_transaction(id)? {
            return Err(MeterError::UnknownTransaction(id.clone()));
        }
        let (state, digest, expires_at_ms, tenant) = {
            let record = self.loaded(id)?;
            (
                record.state,
                PolicyDigest::from_bytes(record.policy),
                record.expires_at_ms,
                record.tenant.clone(),
            )
        };
        match state {
            TransactionState::Settled => {
                let policy = self.policy_ref_of(&digest)?;
                let record = self.loaded(id)?;
                let receipt = record.receipt.as_ref().ok_or_else(|| {
                    MeterError::StoreCorrupt(format!("settled transaction '{id}' has no receipt"))
                })?;
                return Ok(receipt.answer(id, policy, &record.authorization));
            }
            TransactionState::Rejected => return Err(MeterError::TransactionRejected(id.clone())),
            TransactionState::Expired => return Err(MeterError::HoldExpired(id.clone())),
            TransactionState::Open => {}
        }
        if expires_at_ms.is_some_and(|expiry| expiry <= self.builder.batch.at_ms) {
            return Err(MeterError::HoldExpired(id.clone()));
        }
        let info = self.policy(&digest)?;
        self.expire_lots_of(&tenant)?;
        let accounts = self.accounts(&tenant, &info.balances)?;
        let rules = self.state.rules(&tenant);
        let now_ms = self.now_ms();
        let record = self.state.transaction(id).ok_or_else(|| {
            MeterError::StoreUnavailable(format!("transaction '{id}' left memory mid-decision"))
        })?;
        let admitted = sdk::Admitted {
            request: sdk::Request {
                transaction_id: id.clone(),
                tenant: tenant.clone(),
                operation: record.operation.clone(),
                items: record.request.items.clone(),
                attributes: record.request.attributes.clone(),
                body: record.request.body.clone(),
            },
            admitted_items: record.authorization.admitted_items,
            held: to_policy_amounts(&record.held),
            charged: to_policy_amounts(&record.authorization.charged),
        };
        let held = crate::ledger::record::amounts(&record.held);
        let taken_at_ms = i64::try_from(record.created_at_ms).unwrap_or(i64::MAX);
        let drawn = record.drawn_lots();
        let failed_open = record.authorization.failed_open();
        let outcome = sdk::Outcome {
            status: request.status,
            attributes: pairs(&request.attributes),
            body: request.body.clone(),
        };
        // An admission made open was unpriced: its settle charges nothing and does not
        // ask the policy, whose failure the exposure window already counted.
        let SettleDecision {
            charge,
            marks,
            headers,
            meta,
        } = if failed_open.is_some() {
            SettleDecision {
                charge: Amounts::new(),
                marks: Vec::new(),
                headers: Default::default(),
                meta: serde_json::Value::Object(serde_json::Map::new()),
            }
        } else {
            self.registry.settle(
                &digest,
                &admitted,
                &outcome,
                &available(&accounts, &rules, now_ms, &info.balances),
            )?
        };
        let posting = post_settle(&accounts, &rules.overdraft, &held, &charge);
        let windows = self.count_close(&rules.caps, taken_at_ms, &held, &posting.charged)?;
        let lotted = draw(
            self.state,
            &tenant,
            &accounts,
            &rules.overdraft,
            &posting.entries,
            &drawn,
        )?;
        let receipt = Receipt {
            transaction_id: id.clone(),
            balances: available_amounts(&lotted.accounts, &info.balances),
            charged: posting.charged,
            released: posting.released,
            uncollected: posting.uncollected,
            headers,
            meta,
            policy: policy_ref(&info),
            failed_open,
        };
        let policy = self.builder.policy(&digest);
        let posting = posting_record(lotted);
        let late = self.late_closings(&tenant, &posting);
        self.builder.record(
            self.state,
            Decision::Settle(Settled {
                id: id.clone(),
                tenant: tenant.clone(),
                policy,
                status: request.status,
                answer: ReceiptRecord::of(&receipt),
                posting,
                marks: mark_records(&marks),
                outcome: Some(crate::ledger::record::OutcomeRecord::of(request)),
            }),
        )?;
        self.record_windows(&tenant, windows)?;
        self.raise_all(&tenant, late)?;
        Ok(receipt)
    }

    /// Grants credits: a lot now, or (`effective_at_ms` later than now) a grant the
    /// sweep makes at that time. A retry with the same id and terms is answered with the
    /// balances as they are; the same id with other terms is a conflict.
    pub fn grant(&mut self, grant: &GrantRequest) -> Result<TenantBalances, MeterError> {
        let terms = lot_terms(&grant.terms);
        // A retry is answered first, whatever the active policy is now: of a grant
        // scheduled for later (whatever became of it since), or of a lot granted.
        if let Some(scheduled) = self.state.scheduled(&grant.grant_id) {
            if !scheduled::same_request(scheduled, grant, &terms) {
                return Err(MeterError::GrantConflict(grant.grant_id.clone()));
            }
            return self.balances(&grant.tenant);
        }
        let now_ms = i64::try_from(self.builder.batch.at_ms).unwrap_or(i64::MAX);
        let effective_at_ms = grant.terms.effective_at_ms.filter(|at_ms| *at_ms > now_ms);
        if let Some(existing) = self.find_grant(&grant.grant_id)? {
            // A lot granted already is not one that takes effect later (a scheduled
            // grant is granted at its time, so a retry of it names a time past).
            if (
                existing.tenant.as_str(),
                existing.balance.as_str(),
                existing.amount,
                &existing.terms,
                None,
            ) != (
                grant.tenant.as_str(),
                grant.balance.as_str(),
                grant.amount,
                &terms,
                effective_at_ms,
            ) {
                return Err(MeterError::GrantConflict(grant.grant_id.clone()));
            }
            return self.balances(&grant.tenant);
        }
        self.policy_with_balance(&grant.balance)?;
        if let Some(expires_at_ms) = terms.expires_at_ms {
            match effective_at_ms {
                Some(effective_at_ms) if expires_at_ms <= effective_at_ms => {
                    return Err(MeterError::InvalidRequest(format!(
                        "a grant expiring at {expires_at_ms} ms would expire before it takes effect at {effective_at_ms} ms"
                    )));
                }
                None if expires_at_ms <= now_ms => {
                    return Err(MeterError::InvalidRequest(format!(
                        "a grant expiring at {expires_at_ms} ms would expire at once: the ledger's clock reads {now_ms}"
                    )));
                }
                _ => {}
            }
        }
        match effective_at_ms {
            Some(effective_at_ms) => self.schedule(grant, terms, effective_at_ms),
            None => self.grant_lot(grant, terms),
        }
    }

    /// Grants a lot now: its number is its grant entry's id. Refuses a balance the
    /// active policy does not have, and one the grant would take past the largest
    /// amount.
    fn grant_lot(
        &mut self,
        grant: &GrantRequest,
        terms: LotTerms,
    ) -> Result<TenantBalances, MeterError> {
        let active = self.registry.active();
        let info = self.policy_with_balance(&grant.balance)?;
        self.expire_lots_of(&grant.tenant)?;
        let accounts = self.accounts(&grant.tenant, &info.balances)?;
        let available = accounts
            .get(&grant.balance)
            .map_or(0, |account| account.available);
        if available.checked_add(grant.amount).is_none() {
            return Err(MeterError::InvalidAmount(format!(
                "a grant of {} would take '{}' past the largest balance ({})",
                grant.amount,
                grant.balance,
                i64::MAX
            )));
        }
        let lot = Lot::new(
            self.state.next_entry_id,
            grant.amount,
            terms.priority,
            terms.expires_at_ms,
        );
        let rules = self.state.rules(&grant.tenant);
        let mut draw = LotDraw::new(self.state, &grant.tenant, &accounts, &rules.overdraft);
        draw.grant(&grant.balance, lot)?;
        let posting = draw.finish()?;
        let answer = tenant_balances(
            &grant.tenant,
            &posting.accounts,
            &rules,
            self.now_ms(),
            &info.balances,
        );
        let policy = self.builder.policy(&active);
        self.builder.record(
            self.state,
            Decision::Grant(Granted {
                grant_id: grant.grant_id.clone(),
                tenant: grant.tenant.clone(),
                balance: grant.balance.clone(),
                amount: grant.amount,
                policy,
                posting: posting_record(posting),
                terms,
            }),
        )?;
        Ok(answer)
    }

    /// A grant by id, from memory or the store.
    fn find_grant(&mut self, grant_id: &str) -> Result<Option<GrantRecord>, MeterError> {
        Ok(match self.state.grant(grant_id) {
            Some(existing) => Some(existing.clone()),
            None if self.state.may_know_grant(grant_id) => self.store.grant(grant_id)?,
            None => None,
        })
    }

    /// Voids a tenant's grant: its lot's unspent remainder leaves through a `void`
    /// entry; credits already spent stay spent, and credits held leave when their hold
    /// is released. Voiding a voided or expired grant moves nothing.
    pub fn void(&mut self, tenant: &str, grant_id: &str) -> Result<TenantBalances, MeterError> {
        if let Some(scheduled) = self
            .state
            .scheduled(grant_id)
            .filter(|scheduled| scheduled.tenant == tenant)
            .cloned()
        {
            return self.void_scheduled(scheduled);
        }
        let active = self.registry.active();
        let info = self.policy(&active)?;
        let grant = self
            .find_grant(grant_id)?
            .filter(|grant| grant.tenant == tenant)
            .ok_or_else(|| MeterError::UnknownGrant(grant_id.to_owned()))?;
        if grant.lot == LEGACY_LOT {
            return Err(MeterError::GrantNotVoidable(grant_id.to_owned()));
        }
        self.expire_lots_of(tenant)?;
        self.accounts(tenant, &info.balances)?;
        self.close_lot(tenant, &grant.balance, grant.lot, Closure::Voided)?;
        let accounts = self.accounts(tenant, &info.balances)?;
        Ok(tenant_balances(
            tenant,
            &accounts,
            &self.state.rules(tenant),
            self.now_ms(),
            &info.balances,
        ))
    }

    /// Sets an account's overdraft limit: from the next decision on, spending may take
    /// its `available` down to `-limit`. Moves no credit: a limit lowered below what is
    /// already overdrawn refuses new spending until credits come back. Setting the
    /// limit it has records nothing.
    pub fn set_overdraft(
        &mut self,
        tenant: &str,
        balance: &str,
        limit: i64,
    ) -> Result<TenantBalances, MeterError> {
        let info = self.policy_with_balance(balance)?;
        let accounts = self.accounts(tenant, &info.balances)?;
        let limits = self.state.overdraft_limits(tenant);
        if overdraft_limit(&limits, balance) != limit {
            self.builder.record(
                self.state,
                Decision::Overdraft(OverdraftSet {
                    tenant: tenant.to_owned(),
                    balance: balance.to_owned(),
                    limit,
                }),
            )?;
        }
        Ok(tenant_balances(
            tenant,
            &accounts,
            &self.state.rules(tenant),
            self.now_ms(),
            &info.balances,
        ))
    }

    /// Sets or removes a tenant's refill, then grants its period if one is due (a new
    /// refill anchored now grants its first lot at once). A refill that exists keeps
    /// its anchor unless `anchor_ms` names one, and the last period it granted: a
    /// changed schedule never grants a period that starts before that one. Setting
    /// the refill it has records nothing.
    pub fn set_refill(
        &mut self,
        tenant: &str,
        refill_id: &str,
        terms: Option<RefillTerms>,
        anchor_ms: Option<i64>,
    ) -> Result<Vec<RefillView>, MeterError> {
        let active = self.registry.active();
        let info = self.policy(&active)?;
        self.accounts(tenant, &info.balances)?;
        let existing = self.state.refill(tenant, refill_id).cloned();
        let set = match terms {
            None => existing.is_some().then_some(None),
            Some(mut terms) => {
                if !info.has_balance(&terms.balance) {
                    return Err(MeterError::UnknownBalance {
                        balance: terms.balance.clone(),
                        known: info.balances.join(", "),
                    });
                }
                terms.anchor_ms = anchor_ms
                    .or(existing.as_ref().map(|refill| refill.terms.anchor_ms))
                    .unwrap_or_else(|| self.now_ms());
                Refill::new(terms.clone(), None)
                    .map_err(|why| MeterError::InvalidRequest(why.to_string()))?;
                let unchanged = existing
                    .as_ref()
                    .is_some_and(|refill| refill.terms == terms);
                (!unchanged).then_some(Some(terms))
            }
        };
        if let Some(refill) = set {
            self.builder.record(
                self.state,
                Decision::Refill(RefillSet {
                    tenant: tenant.to_owned(),
                    refill_id: refill_id.to_owned(),
                    refill,
                    last_start_ms: existing.and_then(|refill| refill.last_start_ms),
                }),
            )?;
        }
        self.run_refill(tenant, refill_id)?;
        Ok(self.refills(tenant))
    }

    /// The tenant's refills (of the tenants loaded: the caller loads it).
    pub fn refills(&self, tenant: &str) -> Vec<RefillView> {
        self.state
            .tenant_refills(tenant)
            .into_iter()
            .map(|(refill_id, refill)| refill_view(refill_id, refill))
            .collect()
    }

    /// The tenant's refills, loading the tenant.
    pub fn list_refills(&mut self, tenant: &str) -> Result<Vec<RefillView>, MeterError> {
        if !self.state.has_tenant(tenant) {
            self.store.load_tenant(tenant, self.state)?;
        }
        Ok(self.refills(tenant))
    }

    /// Grants the periods of refills that started, at most `limit`; returns how many
    /// refills ran.
    fn grant_due_refills(&mut self, limit: usize) -> Result<usize, MeterError> {
        let now_ms = self.now_ms();
        let mut ran = 0;
        while ran < limit {
            let Some((tenant, refill_id)) = self.state.next_due_refill(now_ms) else {
                break;
            };
            if self.run_refill(&tenant, &refill_id)? {
                ran += 1;
            }
        }
        if ran > 0 {
            tracing::info!(count = ran, "granted refills");
        }
        Ok(ran)
    }

    /// Grants a refill's period if one is due: its lot (none when a rollover refill is
    /// at its cap), then the refill with that period recorded as its last. Answers
    /// whether a period was due. A lot the grant refuses (its balance is no longer the
    /// policy's, or the balance would overflow) is skipped with a warning; the period
    /// still counts as done, so the sweep does not retry it at every batch.
    fn run_refill(&mut self, tenant: &str, refill_id: &str) -> Result<bool, MeterError> {
        let Some(refill) = self.state.refill(tenant, refill_id).cloned() else {
            return Ok(false);
        };
        let period = match refill.due(self.now_ms()) {
            Ok(Some(period)) => period,
            Ok(None) => return Ok(false),
            // A schedule the calendar cannot place now (its periods run past the year
            // 9999) grants nothing; the request path goes on.
            Err(error) => {
                tracing::warn!(tenant, refill = refill_id, %error, "a refill's period cannot be computed; nothing granted");
                return Ok(false);
            }
        };
        let open: i64 = self
            .state
            .tenant_lots(tenant)
            .iter()
            .filter(|(lot, info)| {
                lot.closed.is_none() && refills::is_refill_grant(refill_id, &info.grant_id)
            })
            .map(|(lot, _)| lot.remaining)
            .fold(0, i64::saturating_add);
        if let Some(lot) = refill.lot(refill_id, period, open) {
            let new = self.find_grant(&lot.grant_id)?.is_none();
            let granted = EventKind::RefillGranted {
                refill_id: refill_id.to_owned(),
                grant_id: lot.grant_id.clone(),
                amount: lot.amount,
                period_start_ms: period.start_ms,
            };
            let grant = GrantRequest {
                grant_id: lot.grant_id,
                tenant: tenant.to_owned(),
                balance: refill.terms.balance.clone(),
                amount: lot.amount,
                terms: GrantTerms {
                    effective_at_ms: None,
                    expires_at_ms: lot.expires_at_ms,
                    priority: refill.terms.priority,
                    category: Some(refill.terms.category.clone()),
                    metadata: [("refill".to_owned(), refill_id.to_owned())].into(),
                },
            };
            match self.grant(&grant) {
                Ok(_) if new => self.raise(tenant, &refill.terms.balance, granted)?,
                Ok(_) => {}
                Err(
                    error @ (MeterError::UnknownBalance { .. }
                    | MeterError::InvalidAmount(_)
                    | MeterError::InvalidRequest(_)
                    | MeterError::GrantConflict(_)),
                ) => {
                    tracing::warn!(tenant, refill = refill_id, %error, "a refill's lot was refused; its period is skipped");
                }
                Err(error) => return Err(error),
            }
        }
        self.builder.record(
            self.state,
            Decision::Refill(RefillSet {
                tenant: tenant.to_owned(),
                refill_id: refill_id.to_owned(),
                refill: Some(refill.terms),
                last_start_ms: Some(period.start_ms),
            }),
        )?;
        Ok(true)
    }

    /// Sets or removes an account's spend cap. A new cap, or one counting in other
    /// windows (kind or zone), counts from now; a changed amount keeps the window's
    /// spending. Moves no credit; setting the cap the account has records nothing.
    pub fn set_spend_cap(
        &mut self,
        tenant: &str,
        balance: &str,
        terms: Option<CapTerms>,
    ) -> Result<TenantBalances, MeterError> {
        let info = self.policy_with_balance(balance)?;
        let accounts = self.accounts(tenant, &info.balances)?;
        let now_ms = self.now_ms();
        let current = self.state.rules(tenant).caps.remove(balance);
        let set = match (terms, current) {
            (None, None) => None,
            (None, Some(_)) => Some((None, CapWindow::default())),
            (Some(terms), Some(current)) if current.cap.terms == terms => None,
            (Some(terms), current) => {
                let cap = SpendCap::new(terms.clone())
                    .map_err(|why| MeterError::InvalidRequest(why.to_string()))?;
                let window = match current {
                    Some(current) if current.cap.same_windows(&terms) => current.window,
                    _ => CapWindow::starting(&cap, now_ms).map_err(calendar_failed)?,
                };
                Some((Some(terms), window))
            }
        };
        if let Some((cap, window)) = set {
            self.builder.record(
                self.state,
                Decision::Cap(CapSet {
                    tenant: tenant.to_owned(),
                    balance: balance.to_owned(),
                    cap,
                    window,
                }),
            )?;
        }
        Ok(tenant_balances(
            tenant,
            &accounts,
            &self.state.rules(tenant),
            now_ms,
            &info.balances,
        ))
    }

    /// Closes a lot of a loaded tenant, recording a `CloseLot` decision (unless it is
    /// closed already): its remainder leaves.
    fn close_lot(
        &mut self,
        tenant: &str,
        balance: &str,
        lot: LotId,
        closure: Closure,
    ) -> Result<(), MeterError> {
        let balances = [balance.to_owned()];
        let accounts = self.accounts(tenant, &balances)?;
        let (known, info) = self.state.tenant_lot(tenant, lot).ok_or_else(|| {
            MeterError::StoreCorrupt(format!("lot {lot} of {tenant}/{balance} is not loaded"))
        })?;
        if known.closed.is_some() {
            return Ok(());
        }
        let limits = self.state.overdraft_limits(tenant);
        let mut draw = LotDraw::new(self.state, tenant, &accounts, &limits);
        draw.close(balance, lot, closure)?;
        let mut posting = draw.finish()?;
        // A lot emptied before it closed moves no credit: record its closing all the same.
        if posting.lots.is_empty() {
            posting.lots.push((
                balance.to_owned(),
                Lot {
                    closed: Some(closure),
                    ..known
                },
            ));
        }
        let grant_id = info.grant_id;
        let policy = self.builder.policy(&self.registry.active());
        let posting = posting_record(posting);
        let amount = posting
            .entries
            .iter()
            .map(|entry| entry.amount)
            .fold(0, i64::saturating_add);
        self.builder.record(
            self.state,
            Decision::CloseLot(LotClosed {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                lot,
                grant_id: grant_id.clone(),
                closure,
                policy,
                posting,
            }),
        )?;
        let event = match closure {
            Closure::Expired => EventKind::LotExpired {
                lot,
                grant_id,
                amount,
            },
            Closure::Voided => EventKind::LotVoided {
                lot,
                grant_id,
                amount,
            },
        };
        self.raise(tenant, balance, event)
    }

    /// Expires the tenant's lots that are due, before a decision reads its credits.
    fn expire_lots_of(&mut self, tenant: &str) -> Result<(), MeterError> {
        self.accounts(tenant, &[])?;
        let now_ms = i64::try_from(self.builder.batch.at_ms).unwrap_or(i64::MAX);
        let due = self.state.due_lots(tenant, now_ms);
        for (balance, lot) in due {
            self.close_lot(tenant, &balance, lot, Closure::Expired)?;
        }
        Ok(())
    }

    /// Expires lots whose time came, at most `limit`; returns how many.
    fn expire_due_lots(&mut self, limit: usize) -> Result<usize, MeterError> {
        let now_ms = i64::try_from(self.builder.batch.at_ms).unwrap_or(i64::MAX);
        let mut expired = 0;
        while expired < limit {
            let Some((tenant, balance, lot)) = self.state.next_due_lot(now_ms) else {
                break;
            };
            self.close_lot(&tenant, &balance, lot, Closure::Expired)?;
            expired += 1;
        }
        if expired > 0 {
            tracing::info!(count = expired, "expired lots");
        }
        Ok(expired)
    }

    /// Releases a lapsed hold.
    pub fn expire(&mut self, record: &TransactionRecord) -> Result<(), MeterError> {
        let held = crate::ledger::record::amounts(&record.held);
        let balances: Vec<String> = held.keys().cloned().collect();
        let accounts = self.accounts(&record.tenant, &balances)?;
        let rules = self.state.rules(&record.tenant);
        let taken_at_ms = i64::try_from(record.created_at_ms).unwrap_or(i64::MAX);
        let windows = self.count_close(&rules.caps, taken_at_ms, &held, &Amounts::new())?;
        let entries = post_expiry(&held);
        let posting = draw(
            self.state,
            &record.tenant,
            &accounts,
            &rules.overdraft,
            &entries,
            &record.drawn_lots(),
        )?;
        let policy = self
            .builder
            .policy(&PolicyDigest::from_bytes(record.policy));
        let posting = posting_record(posting);
        let late = self.late_closings(&record.tenant, &posting);
        self.builder.record(
            self.state,
            Decision::Expire(Expired {
                id: record.id.clone(),
                tenant: record.tenant.clone(),
                policy,
                posting,
            }),
        )?;
        self.record_windows(&record.tenant, windows)?;
        self.raise_all(&record.tenant, late)
    }

    /// What every batch does first, at its time, before any policy looks: lapsed holds
    /// go back to their balances, lots past their expiry leave, refill periods and
    /// scheduled grants that came due are granted (a reset refill's lot expired above
    /// as the next period's is granted), and lots about to expire are warned of. At
    /// most `limit` of each; returns how many holds were released. The sequencer runs it
    /// before each batch's jobs (and for `expire_due` at once), a replay before each
    /// recorded batch.
    pub fn sweep(&mut self, limit: usize) -> Result<usize, MeterError> {
        let released = self.expire_due(limit)?;
        self.expire_due_lots(limit)?;
        self.grant_due_refills(limit)?;
        self.grant_due_scheduled(limit)?;
        self.warn_expiring_lots()?;
        Ok(released)
    }

    /// Releases lapsed holds, at most `limit`; returns how many.
    fn expire_due(&mut self, limit: usize) -> Result<usize, MeterError> {
        let now_ms = self.builder.batch.at_ms;
        let mut released = 0;
        while released < limit {
            let Some(record) = self.state.next_lapsed(now_ms) else {
                break;
            };
            self.expire(&record)?;
            released += 1;
        }
        if released > 0 {
            tracing::info!(count = released, "released lapsed holds");
        }
        Ok(released)
    }

    /// The tenant's credits as of this decision, with their lots.
    pub fn lots(&mut self, tenant: &str) -> Result<TenantBalances, MeterError> {
        let mut answer = self.balances(tenant)?;
        let mut lots = Vec::new();
        for (lot, info) in self.state.tenant_lots(tenant) {
            lots.push(LotView {
                lot: lot.id,
                grant_id: info.grant_id,
                balance: info.balance,
                amount: lot.amount,
                remaining: lot.remaining,
                state: match lot.closed {
                    None => "open",
                    Some(Closure::Expired) => "expired",
                    Some(Closure::Voided) => "voided",
                }
                .to_owned(),
                expires_at_ms: lot.expires_at_ms,
                priority: lot.priority,
                category: info.terms.category,
                metadata: info.terms.metadata.into_iter().collect(),
                granted_at_ms: info.granted_at_ms,
            });
        }
        answer.lots = Some(lots);
        answer.scheduled = Some(self.scheduled_views(tenant));
        Ok(answer)
    }

    /// The tenant's credits as of this decision.
    pub fn balances(&mut self, tenant: &str) -> Result<TenantBalances, MeterError> {
        let active = self.registry.active();
        let info = self.policy(&active)?;
        let accounts = self.accounts(tenant, &info.balances)?;
        Ok(tenant_balances(
            tenant,
            &accounts,
            &self.state.rules(tenant),
            self.now_ms(),
            &info.balances,
        ))
    }

    /// Records a policy the ledger has not seen, with its bytes.
    pub fn save_policy(
        &mut self,
        info: &PolicyInfo,
        component: Option<&[u8]>,
    ) -> Result<(), MeterError> {
        let known = self.state.policy(&info.digest.bytes()).is_some()
            || self.store.policy(&info.digest)?.is_some();
        if known {
            return Ok(());
        }
        let policy = self.builder.policy(&info.digest);
        self.builder.record(
            self.state,
            Decision::Policy(PolicyRecord {
                policy,
                name: info.name.clone(),
                version: info.version.clone(),
                balances: info.balances.clone(),
                hold_ttl_ms: info.hold_ttl_ms,
                component: component.map(<[u8]>::to_vec),
            }),
        )
    }

    /// Records that `digest` became active, unless it already is the latest activation.
    pub fn record_activation(
        &mut self,
        digest: &PolicyDigest,
        via: &str,
    ) -> Result<(), MeterError> {
        let latest = match self.state.active_policy() {
            Some(latest) => Some(latest),
            None => self.store.latest_activation()?.map(|digest| digest.bytes()),
        };
        if latest == Some(digest.bytes()) {
            return Ok(());
        }
        let policy = self.builder.policy(digest);
        self.builder.record(
            self.state,
            Decision::Activate(Activation {
                policy,
                via: via.to_owned(),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    //! The decisions on a live state alone: no thread, no store (a whole state asks the
    //! store only for what it lacks, and here it lacks nothing).
    use std::rc::Rc;

    use super::*;
    use crate::ledger::codec;
    use crate::ledger::state::{Coverage, StateLimits};
    use crate::meter::marks::LedgerMarks;
    use crate::policy::native::NativeRuntime;
    use crate::policy::{MarkLookup, component};
    use crate::store::Store;
    use crate::store::empty::EmptyStore;

    /// A meter's parts without its threads: a whole live state and a registry.
    struct Desk {
        state: LiveState,
        registry: Registry,
        store: Rc<dyn Store>,
        batches: Vec<Batch>,
        now_ms: u64,
        failure: FailurePolicy,
    }

    impl Desk {
        fn new(policy: &str) -> Self {
            let state = LiveState::new(Coverage::Whole, StateLimits::default());
            let store: Rc<dyn Store> = Rc::new(EmptyStore::default());
            let marks: Rc<dyn MarkLookup> = Rc::new(LedgerMarks {
                recent: state.marks(),
                store: Rc::clone(&store),
            });
            let runtime: Box<dyn crate::policy::PolicyRuntime> = match policy {
                "smarte" => Box::new(
                    NativeRuntime::<smarte::Smarte>::new("smarte", Rc::clone(&marks)).unwrap(),
                ),
                _ => Box::new(
                    NativeRuntime::<donoratlas::DonorAtlas>::new("donoratlas", Rc::clone(&marks))
                        .unwrap(),
                ),
            };
            let registry = Registry::new(
                component::engine().unwrap(),
                Default::default(),
                None,
                marks,
                runtime,
            );
            Self {
                state,
                registry,
                store,
                batches: Vec::new(),
                now_ms: 1_700_000_000_000,
                failure: FailurePolicy::default(),
            }
        }

        /// Runs `decide` as one batch and keeps the batch.
        fn batch<T>(&mut self, decide: impl FnOnce(&mut Decider<'_>) -> T) -> T {
            let mut builder = BatchBuilder::new(
                self.state.last_seq + 1,
                self.now_ms,
                self.state.next_entry_id,
            );
            let answer = decide(&mut Decider {
                state: &mut self.state,
                store: self.store.as_ref(),
                registry: &mut self.registry,
                builder: &mut builder,
                failure: &self.failure,
                failure_counts: &FailureCounts::default(),
            });
            if !builder.is_empty() {
                self.batches.push(builder.batch);
            }
            answer
        }

        fn authorize(
            &mut self,
            id: &str,
            tenant: &str,
            operation: &str,
            items: &[&str],
        ) -> Result<Authorization, MeterError> {
            let request = AuthorizeRequest {
                transaction_id: Some(id.to_owned()),
                tenant: tenant.to_owned(),
                operation: operation.to_owned(),
                items: items.iter().map(|item| (*item).to_owned()).collect(),
                ..AuthorizeRequest::default()
            };
            let checked = CheckedAuthorize {
                id: id.to_owned(),
                fingerprint: crate::meter::validate::fingerprint(&request),
                request,
            };
            self.batch(|decider| decider.authorize(&checked, Pricing::Admit))
        }

        fn settle(&mut self, id: &str, status: u16, records: &str) -> Result<Receipt, MeterError> {
            let request = SettleRequest {
                transaction_id: id.to_owned(),
                status,
                attributes: [("records".to_owned(), records.to_owned())].into(),
                body: None,
            };
            self.batch(|decider| decider.settle(&request))
        }

        fn grant(
            &mut self,
            id: &str,
            tenant: &str,
            balance: &str,
            amount: i64,
        ) -> Result<TenantBalances, MeterError> {
            let grant = GrantRequest {
                grant_id: id.to_owned(),
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                amount,
                terms: Default::default(),
            };
            self.batch(|decider| decider.grant(&grant))
        }

        fn available(&self, tenant: &str, balance: &str) -> i64 {
            self.state.accounts(tenant, &[balance.to_owned()])[balance].available
        }
    }

    #[test]
    fn an_authorize_holds_and_its_settle_captures_and_releases_on_the_live_state() {
        let mut desk = Desk::new("smarte");
        desk.grant("g", "acme", "default", 5).unwrap();
        let admitted = desk
            .authorize("t1", "acme", "person.enrich", &["a", "b"])
            .unwrap();
        assert!(admitted.admitted);
        assert_eq!(admitted.held["default"], 2);
        assert_eq!(desk.available("acme", "default"), 3);
        let receipt = desk.settle("t1", 200, "1").unwrap();
        assert_eq!(
            (receipt.charged["default"], receipt.released["default"]),
            (1, 1)
        );
        assert_eq!(desk.available("acme", "default"), 4);
        // One batch each, with exactly the decisions made.
        assert_eq!(desk.batches.len(), 3);
        assert!(matches!(
            desk.batches[1].decisions[..],
            [Decision::Authorize(_)]
        ));
    }

    #[test]
    fn a_refused_request_records_a_refusal_and_moves_nothing() {
        let mut desk = Desk::new("smarte");
        desk.grant("g", "acme", "default", 1).unwrap();
        let refused = desk
            .authorize("t1", "acme", "person.enrich", &["a", "b"])
            .unwrap();
        assert_eq!((refused.admitted, refused.status), (false, Some(402)));
        assert_eq!(desk.available("acme", "default"), 1);
        assert_eq!(
            desk.settle("t1", 200, "1").unwrap_err().code(),
            "transaction_rejected"
        );
        // A request that fails outright writes nothing at all.
        let before = desk.batches.len();
        assert_eq!(
            desk.settle("never", 200, "1").unwrap_err().code(),
            "unknown_transaction"
        );
        assert_eq!(desk.batches.len(), before);
    }

    #[test]
    fn a_lapsed_hold_is_released_by_the_expiry_decision() {
        let mut desk = Desk::new("smarte");
        desk.grant("g", "acme", "default", 3).unwrap();
        desk.authorize("t1", "acme", "person.enrich", &["a", "b"])
            .unwrap();
        desk.now_ms += smarte::HOLD_TTL_MS;
        let released = desk.batch(|decider| decider.expire_due(10)).unwrap();
        assert_eq!(released, 1);
        assert_eq!(desk.available("acme", "default"), 3);
        assert_eq!(
            desk.settle("t1", 200, "1").unwrap_err().code(),
            "hold_expired"
        );
    }

    /// xorshift64*: reproducible sequences without a dependency.
    struct Random(u64);

    impl Random {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
        }
    }

    /// Runs a random mix of decisions, as the sequencer would, for `policy`.
    fn random_history(desk: &mut Desk, seed: u64, steps: usize) {
        let mut random = Random(seed | 1);
        let donoratlas = desk.registry.active_info().unwrap().name == "donoratlas";
        let mut open: Vec<String> = Vec::new();
        for step in 0..steps {
            let tenant = format!("tenant-{}", random.below(5));
            match random.below(10) {
                0 => {
                    let balance = if donoratlas {
                        ["enhancement", "export"][random.below(2) as usize]
                    } else {
                        "default"
                    };
                    let _ = desk.grant(
                        &format!("g{step}"),
                        &tenant,
                        balance,
                        1 + random.below(4) as i64,
                    );
                }
                1..=5 => {
                    let id = format!("t{step}");
                    let (operation, items): (&str, Vec<String>) = if donoratlas {
                        match random.below(3) {
                            0 => (
                                "enhance",
                                (0..1 + random.below(4))
                                    .map(|item| format!("p{item}"))
                                    .collect(),
                            ),
                            1 => (
                                "export",
                                (0..1 + random.below(3))
                                    .map(|_| format!("d{}", random.below(6)))
                                    .collect(),
                            ),
                            _ => ("search", Vec::new()),
                        }
                    } else {
                        (
                            "person.enrich",
                            (0..1 + random.below(3))
                                .map(|item| format!("r{item}"))
                                .collect(),
                        )
                    };
                    let items: Vec<&str> = items.iter().map(String::as_str).collect();
                    if desk
                        .authorize(&id, &tenant, operation, &items)
                        .is_ok_and(|answer| answer.admitted)
                    {
                        open.push(id);
                    }
                }
                6..=8 if !open.is_empty() => {
                    let id = open.swap_remove(random.below(open.len() as u64) as usize);
                    let status = [200, 200, 404, 429][random.below(4) as usize];
                    let _ = desk.settle(&id, status, &random.below(4).to_string());
                }
                _ => {
                    desk.now_ms += random.below(smarte::HOLD_TTL_MS / 2);
                    let _ = desk.batch(|decider| decider.expire_due(1_000));
                }
            }
        }
    }

    /// Everything replay must reproduce: accounts, counters, open holds.
    type Observable = (
        Vec<((String, String), crate::ledger::AccountState)>,
        u64,
        u64,
        (usize, usize),
    );

    fn observable(state: &LiveState) -> Observable {
        let mut accounts = state.all_accounts();
        accounts.sort_by(|a, b| a.0.cmp(&b.0));
        (
            accounts,
            state.next_entry_id,
            state.last_seq,
            state.open_holds(),
        )
    }

    #[test]
    fn replaying_the_recorded_batches_rebuilds_exactly_the_state_the_decisions_left() {
        for (seed, policy) in (1..=40).map(|seed| {
            (
                seed,
                if seed % 2 == 0 {
                    "smarte"
                } else {
                    "donoratlas"
                },
            )
        }) {
            let mut desk = Desk::new(policy);
            random_history(&mut desk, seed, 300);
            let mut replayed = LiveState::new(Coverage::Whole, StateLimits::default());
            for batch in &desk.batches {
                // Through the stored form, as recovery reads it.
                let batch = codec::decode(&codec::encode(batch)).unwrap();
                replayed.apply_batch(&batch).unwrap();
            }
            assert_eq!(
                observable(&replayed),
                observable(&desk.state),
                "seed {seed}"
            );
            // And independently of the recorded states: every account is the sum of its
            // journal entries.
            let mut sums: std::collections::BTreeMap<
                (String, String),
                crate::ledger::AccountState,
            > = Default::default();
            for batch in &desk.batches {
                for decision in &batch.decisions {
                    let tenant = match decision {
                        Decision::Authorize(decision) => &decision.tenant,
                        Decision::Settle(decision) => &decision.tenant,
                        Decision::Expire(decision) => &decision.tenant,
                        Decision::Grant(decision) => &decision.tenant,
                        _ => continue,
                    };
                    for entry in decision.entries() {
                        let sum = sums
                            .entry((tenant.clone(), entry.balance.clone()))
                            .or_default();
                        let (available, held) = entry.kind.effect(entry.amount);
                        sum.available += available;
                        sum.held += held;
                    }
                }
            }
            let accounts: std::collections::BTreeMap<_, _> = replayed
                .all_accounts()
                .into_iter()
                .filter(|(_, state)| *state != crate::ledger::AccountState::default())
                .collect();
            sums.retain(|_, state| *state != crate::ledger::AccountState::default());
            assert_eq!(
                accounts, sums,
                "seed {seed}: accounts against their journal"
            );
            for batch in &desk.batches {
                for decision in &batch.decisions {
                    if let Decision::Authorize(authorized) = decision {
                        assert_eq!(
                            replayed.transaction(&authorized.id),
                            desk.state.transaction(&authorized.id),
                            "seed {seed}, transaction {}",
                            authorized.id
                        );
                    }
                }
            }
        }
    }
}
