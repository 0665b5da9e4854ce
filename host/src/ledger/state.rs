//! The live state: what decisions read and change, in memory. On SQLite it is the
//! whole ledger's current state, kept by the sequencer across batches and rebuilt at
//! start from a snapshot and the log; on PostgreSQL it is what one batch read under its
//! locks, thrown away after the batch.
//!
//! It changes in one way only: [`LiveState::apply`] of a recorded [`Decision`]. The
//! sequencer records a decision and then applies it; recovery applies the decisions of
//! the log. So replay and live decisions cannot drift apart.
//!
//! Sizes per entry and bounds are in `docs/ledger.md`; `creditgate bench` measures them.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use growable_bloom_filter::GrowableBloom;
use serde::{Deserialize, Serialize};

use super::caps::{AccountCap, CapTerms, CapWindow, SpendCap};
use super::events::{Watch, check as check_thresholds};
use super::lots::{AccountLots, LEGACY_LOT, Lot, LotId};
use super::record::{
    AmountList, AuthorizationRecord, Batch, Decision, Digest, EntryRecord, LotTerms, PostingRecord,
    ReceiptRecord, RequestRecord, TransactionState,
};
use super::refills::{Refill, RefillTerms};
use super::scheduled::{ScheduledGrant, ScheduledGrants};
use super::tenants::{CapPart, LimitPart, LotPart, LotPartOut, Tenants, WatchPart};
use super::{AccountState, Accounts};
use crate::error::MeterError;

/// The false-positive rate of the id and mark filters: the share of never-seen ids or
/// marks that still cost one indexed read.
pub const FILTER_FALSE_POSITIVE_RATE: f64 = 0.01;
/// The first size the filters are made for; they grow by doubling.
const FILTER_INITIAL_ITEMS: usize = 1 << 16;

/// Everything the ledger knows of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRecord {
    pub id: String,
    pub tenant: String,
    pub state: TransactionState,
    pub fingerprint: Digest,
    /// The policy that authorized; settle runs on it.
    pub policy: Digest,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub operation: String,
    /// What settle hands back to the policy; emptied once the transaction closes.
    pub request: RequestRecord,
    pub authorization: AuthorizationRecord,
    pub receipt: Option<ReceiptRecord>,
    /// Credits still held, per balance (empty once settled or expired).
    pub held: AmountList,
    /// The lots those held credits were drawn from: `(balance, lot, amount)` in the
    /// order drawn (burn order), summing to `held` per balance. Empty for a hold taken
    /// before lots existed: it drew on the legacy lot ([`Self::drawn_lots`]).
    pub drawn: Vec<(String, LotId, i64)>,
}

/// The `(balance, lot, amount)` a hold drew, from its authorize's hold entries.
pub fn drawn_by(entries: &[EntryRecord]) -> Vec<(String, LotId, i64)> {
    entries
        .iter()
        .filter(|entry| entry.kind == super::EntryKind::Hold)
        .map(|entry| (entry.balance.clone(), entry.lot, entry.amount))
        .collect()
}

impl TransactionRecord {
    /// Bytes this record keeps on the heap, roughly: what the open-hold budget counts.
    pub fn heap_bytes(&self) -> usize {
        let strings = |pairs: &[(String, String)]| -> usize {
            pairs.iter().map(|(a, b)| a.len() + b.len() + 48).sum()
        };
        let amounts = |list: &AmountList| -> usize { list.iter().map(|(b, _)| b.len() + 32).sum() };
        self.id.len()
            + self.tenant.len()
            + self.operation.len()
            + self
                .request
                .items
                .iter()
                .map(|item| item.len() + 24)
                .sum::<usize>()
            + strings(&self.request.attributes)
            + self.request.body.as_ref().map_or(0, Vec::len)
            + strings(&self.authorization.headers)
            + self.authorization.meta_json.len()
            + amounts(&self.authorization.held)
            + amounts(&self.authorization.charged)
            + amounts(&self.authorization.balances)
            + amounts(&self.held)
            + std::mem::size_of::<Self>()
    }

    fn holds_credits(&self) -> bool {
        self.state == TransactionState::Open && !self.held.is_empty()
    }

    /// What the hold drew, by lot: a hold recorded before lots drew on the legacy lot.
    pub fn drawn_lots(&self) -> Vec<(String, LotId, i64)> {
        if self.drawn.is_empty() {
            self.held
                .iter()
                .map(|(balance, amount)| (balance.clone(), LEGACY_LOT, *amount))
                .collect()
        } else {
            self.drawn.clone()
        }
    }
}

/// What the ledger keeps of a lot besides its figures: who has it, and its grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotInfo {
    pub tenant: String,
    pub balance: String,
    pub grant_id: String,
    pub terms: LotTerms,
    pub granted_at_ms: u64,
}

/// A grant as idempotency needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub tenant: String,
    pub balance: String,
    pub amount: i64,
    /// Its lot; [`LEGACY_LOT`] for a grant made before lots existed.
    pub lot: LotId,
    pub terms: LotTerms,
}

/// What the ledger knows of a policy besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMeta {
    pub name: String,
    pub version: String,
    pub balances: Vec<String>,
    pub hold_ttl_ms: u64,
}

/// The bytes of the live state's filters, as serialized (their bit arrays and
/// parameters): what they keep in memory, without the allocator's overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FilterBytes {
    /// Transaction and grant ids.
    pub ids: usize,
    pub marks: usize,
}

/// Limits of the structures kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Open transactions holding credits, at most: an admission that would hold credits
    /// beyond it fails `overloaded` and moves nothing.
    pub open_holds_max: usize,
    /// Heap bytes those open holds may keep (their requests above all).
    pub open_hold_bytes_max: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            open_holds_max: 1_000_000,
            open_hold_bytes_max: 512 << 20,
        }
    }
}

/// The marks a decision can see without a disk read: those recorded in batches the
/// views have not applied yet, this batch's included, and a filter of every mark ever
/// made. Shared (behind an `Rc`) with the policy runtime's `marked` lookups.
#[derive(Default)]
pub struct RecentMarks {
    by_key: HashMap<Box<str>, u64>,
    order: VecDeque<(u64, Box<str>)>,
    /// Every mark of the ledger (SQLite); none where the state is partial (PostgreSQL).
    filter: Option<GrowableBloom>,
}

/// The key of a mark: tenant, scope and key, which never hold a NUL.
pub fn mark_key(tenant: &str, scope: &str, key: &str) -> String {
    format!("{tenant}\0{scope}\0{key}")
}

/// A stable 64-bit hash of filter keys: filters are stored in snapshots, so they must
/// not depend on std's unspecified `Hash` of strings.
fn filter_hash(kind: u8, text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), u64::from(kind))
}

const ID_TRANSACTION: u8 = 1;
const ID_GRANT: u8 = 2;
const ID_MARK: u8 = 3;

fn new_filter() -> GrowableBloom {
    GrowableBloom::new(FILTER_FALSE_POSITIVE_RATE, FILTER_INITIAL_ITEMS)
}

impl RecentMarks {
    /// Whether `(tenant, scope, key)` is marked, as far as memory can tell: `Some(true)`
    /// if it is, `Some(false)` if the filter rules it out, `None` if only the store knows.
    pub fn lookup(&self, key: &str) -> Option<bool> {
        if self.by_key.contains_key(key) {
            return Some(true);
        }
        match &self.filter {
            Some(filter) if !filter.contains(filter_hash(ID_MARK, key)) => Some(false),
            _ => None,
        }
    }

    fn insert(&mut self, key: String, seq: u64) {
        if let Some(filter) = &mut self.filter {
            filter.insert(filter_hash(ID_MARK, &key));
        }
        let key: Box<str> = key.into();
        self.by_key.insert(key.clone(), seq);
        self.order.push_back((seq, key));
    }

    fn evict_through(&mut self, applied_seq: u64) {
        while let Some((seq, _)) = self.order.front() {
            if *seq > applied_seq {
                break;
            }
            if let Some((seq, key)) = self.order.pop_front()
                && self.by_key.get(&key) == Some(&seq)
            {
                self.by_key.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The live state of a ledger.
pub struct LiveState {
    limits: StateLimits,
    /// Every tenant's accounts, in the order tenants first appeared.
    tenants: Tenants,
    /// Open transactions holding credits, and every transaction decided in a batch the
    /// views have not applied yet, with the seq of the batch that last changed it.
    transactions: HashMap<Box<str>, (u64, TransactionRecord)>,
    /// `(seq, id)` in the order transactions changed: evicted once applied to the views.
    recent: VecDeque<(u64, Box<str>)>,
    /// Open holds by expiry; an entry whose transaction closed meanwhile is skipped.
    expiry: BinaryHeap<Reverse<(u64, Box<str>)>>,
    open_holds: usize,
    open_hold_bytes: usize,
    grants: HashMap<Box<str>, (u64, GrantRecord)>,
    recent_grants: VecDeque<(u64, Box<str>)>,
    marks: Rc<RefCell<RecentMarks>>,
    /// Every transaction and grant id ever recorded (SQLite): a new id costs no read.
    ids: Option<GrowableBloom>,
    policies: HashMap<Digest, PolicyMeta>,
    /// Component bytes of policies recorded in batches the views have not applied yet.
    recent_components: HashMap<Digest, (u64, Option<Vec<u8>>)>,
    active_policy: Option<Digest>,
    /// Open lots by expiry, with their tenant's index; an entry whose lot closed
    /// meanwhile is skipped. (The lots themselves are the tenants'.)
    lot_expiry: BinaryHeap<Reverse<(i64, LotId, u32)>>,
    /// Refills by (tenant, refill id): few, and read only by the sweep and operators.
    refills: BTreeMap<(String, String), Refill>,
    /// When each refill's next period starts; an entry its refill moved past since is
    /// skipped.
    refill_due: BinaryHeap<Reverse<(i64, String, String)>>,
    /// Grants that take effect later, by id, pending by time.
    scheduled: ScheduledGrants,
    /// The seq of the last batch applied.
    pub last_seq: u64,
    /// The id the next journal entry gets.
    pub next_entry_id: u64,
    /// When the sweep looks for lots to warn of next: a timer of this process, not
    /// state of the ledger (never recorded).
    pub next_warning_sweep_ms: i64,
}

/// A whole ledger in memory (SQLite), or a batch's share of one (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every tenant, open hold and recent transaction is here; filters rule out the
    /// rest without asking the store.
    Whole,
    /// Only what a batch loaded; anything else is asked of the store.
    Partial,
}

impl LiveState {
    pub fn new(coverage: Coverage, limits: StateLimits) -> Self {
        let whole = coverage == Coverage::Whole;
        Self {
            limits,
            tenants: Tenants::default(),
            transactions: HashMap::new(),
            recent: VecDeque::new(),
            expiry: BinaryHeap::new(),
            open_holds: 0,
            open_hold_bytes: 0,
            grants: HashMap::new(),
            recent_grants: VecDeque::new(),
            marks: Rc::new(RefCell::new(RecentMarks {
                filter: whole.then(new_filter),
                ..RecentMarks::default()
            })),
            ids: whole.then(new_filter),
            policies: HashMap::new(),
            recent_components: HashMap::new(),
            active_policy: None,
            lot_expiry: BinaryHeap::new(),
            refills: BTreeMap::new(),
            refill_due: BinaryHeap::new(),
            scheduled: ScheduledGrants::default(),
            last_seq: 0,
            next_entry_id: 1,
            next_warning_sweep_ms: 0,
        }
    }

    /// Forgets everything (a PostgreSQL batch starts from what it reads), keeping the
    /// marks index the policy runtimes hold.
    pub fn reset(&mut self) {
        let marks = Rc::clone(&self.marks);
        {
            let mut recent = marks.borrow_mut();
            recent.by_key.clear();
            recent.order.clear();
        }
        *self = Self {
            marks,
            ..Self::new(self.coverage(), self.limits)
        };
    }

    pub fn coverage(&self) -> Coverage {
        if self.ids.is_some() {
            Coverage::Whole
        } else {
            Coverage::Partial
        }
    }

    pub fn limits(&self) -> StateLimits {
        self.limits
    }

    /// The marks index the policy runtime's lookups read.
    pub fn marks(&self) -> Rc<RefCell<RecentMarks>> {
        Rc::clone(&self.marks)
    }

    /// Whether the tenant's accounts are here (on a whole state: whether it ever had one).
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants.contains(tenant)
    }

    /// The tenant's accounts for `balances` (zero where none exists yet).
    pub fn accounts(&self, tenant: &str, balances: &[String]) -> Accounts {
        let mut accounts: Accounts = balances
            .iter()
            .map(|balance| (balance.clone(), AccountState::default()))
            .collect();
        for (balance, state) in self.tenants.accounts(tenant) {
            match accounts.get_mut(balance) {
                Some(known) => *known = state,
                None => {
                    accounts.insert(balance.to_owned(), state);
                }
            }
        }
        accounts
    }

    /// Every account of the tenant that exists.
    pub fn tenant_accounts(&self, tenant: &str) -> Accounts {
        self.accounts(tenant, &[])
    }

    /// Records account states read from a store (PostgreSQL) or after a decision.
    pub fn set_accounts<'a>(
        &mut self,
        tenant: &str,
        states: impl IntoIterator<Item = (&'a String, &'a AccountState)>,
    ) -> Result<(), MeterError> {
        self.tenants.set(tenant, states)
    }

    /// Marks a tenant as loaded with no accounts (PostgreSQL: it has none yet).
    pub fn touch_tenant(&mut self, tenant: &str) -> Result<(), MeterError> {
        self.tenants.touch(tenant)
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Tenants `start..end` in the order they appeared, with their accounts.
    pub fn tenant_slice(&self, start: usize, end: usize) -> TenantSlice {
        self.tenants.slice(start, end)
    }

    /// Every account of every tenant (the audit).
    pub fn all_accounts(&self) -> Vec<((String, String), AccountState)> {
        self.tenant_slice(0, self.tenants.len())
            .into_iter()
            .flat_map(|(tenant, accounts)| {
                accounts
                    .into_iter()
                    .map(move |(balance, state)| ((tenant.clone(), balance), state))
            })
            .collect()
    }

    /// The tenant's overdraft limits, by balance (those set above 0).
    pub fn overdraft_limits(&self, tenant: &str) -> super::OverdraftLimits {
        self.tenants.overdraft_limits(tenant)
    }

    /// Sets an account's overdraft limit, as a store read it (PostgreSQL) or a decision
    /// recorded it.
    pub fn set_overdraft_limit(
        &mut self,
        tenant: &str,
        balance: &str,
        limit: i64,
    ) -> Result<(), MeterError> {
        if limit < 0 {
            return Err(corrupt(format!(
                "{tenant}/{balance} would have an overdraft limit of {limit}"
            )));
        }
        self.tenants.set_overdraft_limit(tenant, balance, limit)
    }

    /// What an operator set on the tenant's accounts: overdraft limits and spend caps.
    pub fn rules(&self, tenant: &str) -> super::AccountRules {
        super::AccountRules {
            overdraft: self.overdraft_limits(tenant),
            caps: self.tenants.spend_caps(tenant),
            thresholds: self.tenants.thresholds(tenant),
        }
    }

    /// Sets or removes an account's spend cap, with its window, as a store read it
    /// (PostgreSQL) or a decision recorded it.
    pub fn set_spend_cap(
        &mut self,
        tenant: &str,
        balance: &str,
        cap: Option<(CapTerms, CapWindow)>,
    ) -> Result<(), MeterError> {
        let cap = match cap {
            Some((terms, window)) => Some(AccountCap {
                cap: SpendCap::new(terms).map_err(|why| {
                    corrupt(format!("the spend cap of {tenant}/{balance}: {why}"))
                })?,
                window,
            }),
            None => None,
        };
        self.tenants.set_spend_cap(tenant, balance, cap)
    }

    /// An account's spend cap and window, if it has one.
    pub fn spend_cap(&self, tenant: &str, balance: &str) -> Option<AccountCap> {
        self.tenants.spend_caps(tenant).remove(balance)
    }

    /// Sets or removes what an operator watches on an account, as a store read it
    /// (PostgreSQL) or a decision recorded it.
    pub fn set_watch(
        &mut self,
        tenant: &str,
        balance: &str,
        watch: Option<Watch>,
    ) -> Result<(), MeterError> {
        if let Some(watch) = &watch {
            check_thresholds(&watch.thresholds)
                .map_err(|why| corrupt(format!("the watch of {tenant}/{balance}: {why}")))?;
        }
        self.tenants.set_watch(tenant, balance, watch)
    }

    /// What an operator watches on an account, if anything.
    pub fn watch(&self, tenant: &str, balance: &str) -> Option<&Watch> {
        self.tenants.watch(tenant, balance)
    }

    /// Whether any account of the tenant is watched.
    pub fn is_watched(&self, tenant: &str) -> bool {
        self.tenants.is_watched(tenant)
    }

    /// The watched accounts that want lots warned of before they expire.
    pub fn watches_with_lead(&self) -> Vec<(String, String)> {
        self.tenants.watches_with_lead()
    }

    /// The watches of tenants `start..end` (a snapshot's).
    pub fn watch_slice(&self, start: usize, end: usize) -> WatchPart {
        self.tenants.watch_slice(start, end)
    }

    /// The amount of the account's latest grant (its newest lot), which percent levels
    /// are measured against.
    pub fn latest_grant(&self, tenant: &str, balance: &str) -> Option<i64> {
        self.tenants
            .account_lots(tenant, balance)
            .iter()
            .filter(|lot| lot.id != LEGACY_LOT)
            .max_by_key(|lot| lot.id)
            .map(|lot| lot.amount)
    }

    /// The spend caps of tenants `start..end` (a snapshot's).
    pub fn cap_slice(&self, start: usize, end: usize) -> CapPart {
        self.tenants.cap_slice(start, end)
    }

    /// The overdraft limits of tenants `start..end` (a snapshot's).
    pub fn limit_slice(&self, start: usize, end: usize) -> LimitPart {
        self.tenants.limit_slice(start, end)
    }

    /// An account's lots as a decision draws on them: its own lots and the legacy lot,
    /// which holds what `available` has beyond them (credits granted before lots), or
    /// is below zero by what the account is overdrawn.
    pub fn account_lots(
        &self,
        tenant: &str,
        balance: &str,
        available: i64,
    ) -> Result<AccountLots, MeterError> {
        let own = self.tenants.account_lots(tenant, balance);
        let in_lots = open_remaining(&own);
        // L1: overdrawn only once every lot is empty.
        let legacy = available
            .checked_sub(in_lots)
            .filter(|legacy| *legacy >= 0 || in_lots == 0)
            .ok_or_else(|| {
                broken(format!(
                    "{tenant}/{balance} has {available} available but its lots hold {in_lots}"
                ))
            })?;
        AccountLots::restore(own.into_iter().chain([Lot::legacy(legacy)]))
            .map_err(|error| broken(format!("{tenant}/{balance}: {error}")))
    }

    /// Loads a snapshot part of a slice of tenants, told by its magic: their accounts,
    /// their lots, their overdraft limits or their spend caps.
    pub fn restore_part(&mut self, bytes: &[u8]) -> Result<(), MeterError> {
        if bytes.starts_with(SNAPSHOT_LOTS) {
            self.restore_lots(decode_lots(bytes)?)
        } else if bytes.starts_with(SNAPSHOT_LIMITS) {
            let limits: LimitPart = super::codec::decode_value(SNAPSHOT_LIMITS, bytes)?;
            for (tenant, balance, limit) in limits {
                self.set_overdraft_limit(&tenant, &balance, limit)?;
            }
            Ok(())
        } else if bytes.starts_with(SNAPSHOT_REFILLS) {
            let refills: RefillPart = super::codec::decode_value(SNAPSHOT_REFILLS, bytes)?;
            for (tenant, refill_id, terms, last_start_ms) in refills {
                self.set_refill(&tenant, &refill_id, Some((terms, last_start_ms)))?;
            }
            Ok(())
        } else if bytes.starts_with(SNAPSHOT_WATCHES) {
            let watches: WatchPart = super::codec::decode_value(SNAPSHOT_WATCHES, bytes)?;
            for (tenant, balance, watch) in watches {
                self.set_watch(&tenant, &balance, Some(watch))?;
            }
            Ok(())
        } else if bytes.starts_with(SNAPSHOT_SCHEDULED) {
            let grants: ScheduledPart = super::codec::decode_value(SNAPSHOT_SCHEDULED, bytes)?;
            for grant in grants {
                self.set_scheduled(grant)?;
            }
            Ok(())
        } else if bytes.starts_with(SNAPSHOT_CAPS) {
            let caps: CapPart = super::codec::decode_value(SNAPSHOT_CAPS, bytes)?;
            for (tenant, balance, terms, window) in caps {
                self.set_spend_cap(&tenant, &balance, Some((terms, window)))?;
            }
            Ok(())
        } else {
            self.restore_tenants(decode_tenants(bytes)?)
        }
    }

    /// Loads a snapshot's lots part.
    fn restore_lots(&mut self, part: LotPart) -> Result<(), MeterError> {
        for (expires_at_ms, id, index) in self.tenants.restore_lots(part)? {
            self.lot_expiry.push(Reverse((expires_at_ms, id, index)));
        }
        Ok(())
    }

    /// Every lot of the tenant, closed ones included, in burn order per balance.
    pub fn tenant_lots(&self, tenant: &str) -> Vec<(Lot, LotInfo)> {
        let mut lots = self.tenants.lots(tenant);
        lots.sort_by(|(left, left_info), (right, right_info)| {
            left_info
                .balance
                .cmp(&right_info.balance)
                .then_with(|| left.burn_order(right))
        });
        lots
    }

    /// The tenant's open lots whose expiry is at or before `now_ms`: `(balance, lot)`.
    /// Allocates nothing when none is.
    pub fn due_lots(&self, tenant: &str, now_ms: i64) -> Vec<(String, LotId)> {
        self.tenants.due_lots(tenant, now_ms)
    }

    /// One lot of the tenant, with its grant.
    pub fn tenant_lot(&self, tenant: &str, lot: LotId) -> Option<(Lot, LotInfo)> {
        self.tenants
            .lots(tenant)
            .into_iter()
            .find(|(known, _)| known.id == lot)
    }

    /// Puts lots read from a store into memory (PostgreSQL), with their grants.
    pub fn load_lots(&mut self, lots: Vec<(Lot, LotInfo)>) -> Result<(), MeterError> {
        for (lot, info) in lots {
            let id = lot.id;
            self.set_lot(&info.tenant, &info.balance, lot)?;
            self.tenants.set_lot_grant(
                &info.tenant,
                id,
                &info.grant_id,
                info.granted_at_ms,
                &info.terms,
            );
        }
        Ok(())
    }

    /// The open lot that expired first, if it expired at or before `now_ms`:
    /// `(tenant, balance, lot)`.
    /// Sets or removes a refill, as a decision recorded it (or a store read it).
    pub fn set_refill(
        &mut self,
        tenant: &str,
        refill_id: &str,
        refill: Option<(RefillTerms, Option<i64>)>,
    ) -> Result<(), MeterError> {
        let key = (tenant.to_owned(), refill_id.to_owned());
        let Some((terms, last_start_ms)) = refill else {
            self.refills.remove(&key);
            return Ok(());
        };
        // A snapshot writes refills with their tenant's slice.
        self.touch_tenant(tenant)?;
        let refill = Refill::new(terms, last_start_ms)
            .map_err(|why| corrupt(format!("refill {refill_id} of {tenant}: {why}")))?;
        if let Ok(next_ms) = refill.next_start_ms() {
            self.refill_due
                .push(Reverse((next_ms, key.0.clone(), key.1.clone())));
        }
        self.refills.insert(key, refill);
        Ok(())
    }

    pub fn refill(&self, tenant: &str, refill_id: &str) -> Option<&Refill> {
        self.refills.get(&(tenant.to_owned(), refill_id.to_owned()))
    }

    /// The tenant's refills, by id.
    pub fn tenant_refills(&self, tenant: &str) -> Vec<(&str, &Refill)> {
        self.refills
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((owner, _), _)| owner == tenant)
            .map(|((_, id), refill)| (id.as_str(), refill))
            .collect()
    }

    /// Sets a grant that takes effect later, as a decision recorded it (or a store read
    /// it with its tenant): the sweep grants it when its time comes.
    pub fn set_scheduled(&mut self, grant: ScheduledGrant) -> Result<(), MeterError> {
        // A snapshot writes scheduled grants with their tenant's slice.
        self.touch_tenant(&grant.tenant)?;
        self.scheduled.set(grant, true);
        Ok(())
    }

    /// A grant that takes effect later, read by id only (PostgreSQL: a retry or a void
    /// compares with it): its tenant is not loaded, so this batch's sweep leaves it.
    pub fn know_scheduled(&mut self, grant: ScheduledGrant) {
        self.scheduled.set(grant, false);
    }

    pub fn scheduled(&self, grant_id: &str) -> Option<&ScheduledGrant> {
        self.scheduled.get(grant_id)
    }

    /// The tenant's grants that take effect later (or were voided or refused before
    /// they did), by time.
    pub fn tenant_scheduled(&self, tenant: &str) -> Vec<&ScheduledGrant> {
        self.scheduled.of_tenant(tenant)
    }

    /// The pending grant whose time came first, if it came by `now_ms`.
    pub fn next_due_scheduled(&mut self, now_ms: i64) -> Option<ScheduledGrant> {
        self.scheduled.next_due(now_ms)
    }

    /// The scheduled grants of tenants `start..end` (a snapshot's).
    pub fn scheduled_slice(&self, start: usize, end: usize) -> ScheduledPart {
        self.scheduled.filtered(|tenant| {
            self.tenants
                .index_of(tenant)
                .is_some_and(|index| (start..end).contains(&(index as usize)))
        })
    }

    /// The next refill whose period started by `now_ms`, taken off the queue (granting
    /// it records its next start).
    pub fn next_due_refill(&mut self, now_ms: i64) -> Option<(String, String)> {
        while let Some(Reverse((start_ms, _, _))) = self.refill_due.peek() {
            if *start_ms > now_ms {
                return None;
            }
            let Reverse((start_ms, tenant, refill_id)) = self.refill_due.pop()?;
            let current = self
                .refills
                .get(&(tenant.clone(), refill_id.clone()))
                .and_then(|refill| refill.next_start_ms().ok());
            if current == Some(start_ms) {
                return Some((tenant, refill_id));
            }
        }
        None
    }

    /// The refills of tenants `start..end` (a snapshot's).
    pub fn refill_slice(&self, start: usize, end: usize) -> RefillPart {
        self.refills
            .iter()
            .filter(|((tenant, _), _)| {
                self.tenants
                    .index_of(tenant)
                    .is_some_and(|index| (start..end).contains(&(index as usize)))
            })
            .map(|((tenant, id), refill)| {
                (
                    tenant.clone(),
                    id.clone(),
                    refill.terms.clone(),
                    refill.last_start_ms,
                )
            })
            .collect()
    }

    pub fn next_due_lot(&mut self, now_ms: i64) -> Option<(String, String, LotId)> {
        while let Some(Reverse((expires_at_ms, id, index))) = self.lot_expiry.peek() {
            if *expires_at_ms > now_ms {
                return None;
            }
            let due = self
                .tenants
                .open_lot_at(*index, *id, *expires_at_ms)
                .zip(self.tenants.name_at(*index))
                .map(|(balance, tenant)| (tenant.to_owned(), balance.to_owned(), *id));
            if due.is_some() {
                return due;
            }
            self.lot_expiry.pop();
        }
        None
    }

    /// Checks a decision's posting against the state before it is applied (the live
    /// path; replay applies absolute states, which may already include it):
    /// - L2: each lot it lists moved by exactly the entries naming it, and every entry
    ///   naming a lot lists that lot;
    /// - L1: on each account it touches, the open lots hold at most what is available
    ///   (the legacy lot holds the rest, never less than nothing).
    pub fn check_posting(&self, tenant: &str, posting: &PostingRecord) -> Result<(), String> {
        let current = |balance: &str, id: LotId| {
            self.tenants
                .account_lots(tenant, balance)
                .into_iter()
                .find(|lot| lot.id == id)
        };
        for entry in &posting.entries {
            if entry.lot != LEGACY_LOT
                && !posting
                    .lots
                    .iter()
                    .any(|(balance, lot)| *balance == entry.balance && lot.id == entry.lot)
            {
                return Err(format!("entry {entry:?} names a lot its posting omits"));
            }
        }
        for (balance, lot) in &posting.lots {
            let before = current(balance, lot.id).map_or(0, |known| known.remaining);
            let moved: i64 = posting
                .entries
                .iter()
                .filter(|entry| entry.balance == *balance && entry.lot == lot.id)
                .map(|entry| entry.kind.effect(entry.amount).0)
                .sum();
            if before + moved != lot.remaining {
                return Err(format!(
                    "lot {} of {tenant}/{balance} went from {before} to {} but its entries moved {moved}",
                    lot.id, lot.remaining
                ));
            }
        }
        for (balance, account) in &posting.accounts {
            let mut own: Vec<Lot> = self
                .tenants
                .account_lots(tenant, balance)
                .into_iter()
                .filter(|known| {
                    !posting
                        .lots
                        .iter()
                        .any(|(other, lot)| other == balance && lot.id == known.id)
                })
                .collect();
            own.extend(
                posting
                    .lots
                    .iter()
                    .filter(|(other, _)| other == balance)
                    .map(|(_, lot)| lot.clone()),
            );
            let in_lots = open_remaining(&own);
            if in_lots > account.available.max(0) {
                return Err(format!(
                    "{tenant}/{balance} would have {} available but its lots hold {in_lots}",
                    account.available
                ));
            }
        }
        Ok(())
    }

    /// L1 over the whole state: on every account, the open lots hold at most what is
    /// available (nothing when it is overdrawn). Recovery checks it once the log is
    /// replayed.
    pub fn check_lots(&self) -> Result<(), MeterError> {
        match self.tenants.lots_beyond_available() {
            None => Ok(()),
            Some((tenant, balance, in_lots, available)) => Err(broken(format!(
                "{tenant}/{balance} has {available} available but its lots hold {in_lots}"
            ))),
        }
    }

    /// The lots of tenants `start..end` in the order they appeared (a snapshot's).
    pub fn lot_slice(&self, start: usize, end: usize) -> LotPartOut<'_> {
        self.tenants.lot_slice(start, end)
    }

    /// Every lot of every tenant (the audit).
    pub fn all_lots(&self) -> Vec<((String, String), Lot)> {
        self.tenants
            .all_lots()
            .into_iter()
            .map(|(lot, info)| ((info.tenant, info.balance), lot))
            .collect()
    }

    /// A transaction known in memory. `Err(())`-free: `None` means "not here" — on a
    /// whole state ask [`LiveState::may_know_id`] before asking the store.
    pub fn transaction(&self, id: &str) -> Option<&TransactionRecord> {
        self.transactions.get(id).map(|(_, record)| record)
    }

    /// Whether the store may know a transaction id memory does not have: false only
    /// when the filter rules it out (a whole state).
    pub fn may_know_transaction(&self, id: &str) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.contains(filter_hash(ID_TRANSACTION, id)))
    }

    pub fn may_know_grant(&self, grant_id: &str) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.contains(filter_hash(ID_GRANT, grant_id)))
    }

    /// Puts a transaction read from the store into memory, so a decision can change it.
    pub fn load_transaction(&mut self, record: TransactionRecord, seq: u64) {
        self.insert_transaction(record, seq);
    }

    pub fn grant(&self, grant_id: &str) -> Option<&GrantRecord> {
        self.grants.get(grant_id).map(|(_, grant)| grant)
    }

    pub fn load_grant(&mut self, grant_id: &str, grant: GrantRecord) {
        self.grants.insert(grant_id.into(), (0, grant));
    }

    pub fn policy(&self, digest: &Digest) -> Option<&PolicyMeta> {
        self.policies.get(digest)
    }

    /// The bytes of a policy recorded in a batch the views have not applied yet:
    /// `Some(None)` for one linked natively, `None` when the store has them.
    pub fn recent_component(&self, digest: &Digest) -> Option<Option<&[u8]>> {
        self.recent_components
            .get(digest)
            .map(|(_, component)| component.as_deref())
    }

    pub fn active_policy(&self) -> Option<Digest> {
        self.active_policy
    }

    /// Marks `digest` as the ledger's latest activation without a record of this
    /// process's: another replica recorded it in the shared ledger (`meter/follower.rs`).
    /// A later activation of the policy this replica ran before is then recorded again.
    pub fn adopt_active_policy(&mut self, digest: Digest) {
        self.active_policy = Some(digest);
    }

    /// Open holds, and the heap bytes they keep.
    pub fn open_holds(&self) -> (usize, usize) {
        (self.open_holds, self.open_hold_bytes)
    }

    /// The bytes of the filters now.
    pub fn filter_bytes(&self) -> FilterBytes {
        let size = |filter: Option<&GrowableBloom>| {
            filter.map_or(0, |filter| {
                postcard::to_allocvec(filter).map_or(0, |bytes| bytes.len())
            })
        };
        FilterBytes {
            ids: size(self.ids.as_ref()),
            marks: size(self.marks.borrow().filter.as_ref()),
        }
    }

    /// Whether one more open hold of `bytes` fits the limits.
    pub fn hold_fits(&self, bytes: usize) -> bool {
        self.open_holds < self.limits.open_holds_max
            && self.open_hold_bytes.saturating_add(bytes) <= self.limits.open_hold_bytes_max
    }

    /// Transactions decided in batches the views have not applied yet, plus open holds.
    pub fn transactions_in_memory(&self) -> usize {
        self.transactions.len()
    }

    /// Changes memory keeps until the views apply them: the views' lag, in decisions.
    pub fn unapplied(&self) -> usize {
        self.recent.len() + self.recent_grants.len()
    }

    /// The open hold that lapsed first, if it lapsed at or before `now_ms`.
    pub fn next_lapsed(&mut self, now_ms: u64) -> Option<TransactionRecord> {
        while let Some(Reverse((expires_at_ms, id))) = self.expiry.peek() {
            if *expires_at_ms > now_ms {
                return None;
            }
            let current = self
                .transactions
                .get(id.as_ref())
                .map(|(_, record)| record)
                .filter(|record| {
                    record.holds_credits() && record.expires_at_ms == Some(*expires_at_ms)
                });
            if let Some(record) = current {
                return Some(record.clone());
            }
            self.expiry.pop();
        }
        None
    }

    /// The digests of policies open transactions still need.
    pub fn open_policies(&self) -> std::collections::BTreeSet<Digest> {
        self.transactions
            .values()
            .map(|(_, record)| record)
            .filter(|record| record.state == TransactionState::Open)
            .map(|record| record.policy)
            .collect()
    }

    /// Forgets what the views have applied (through `applied_seq`) and memory need not
    /// keep: closed transactions, admissions without a hold, grants, marks.
    pub fn evict_through(&mut self, applied_seq: u64) {
        while let Some((seq, _)) = self.recent.front() {
            if *seq > applied_seq {
                break;
            }
            if let Some((seq, id)) = self.recent.pop_front()
                && let Some((last, record)) = self.transactions.get(id.as_ref())
                && *last <= seq
                && !record.holds_credits()
            {
                self.transactions.remove(id.as_ref());
            }
        }
        while let Some((seq, _)) = self.recent_grants.front() {
            if *seq > applied_seq {
                break;
            }
            if let Some((seq, id)) = self.recent_grants.pop_front()
                && self.grants.get(&id).is_some_and(|(last, _)| *last <= seq)
            {
                self.grants.remove(&id);
            }
        }
        self.marks.borrow_mut().evict_through(applied_seq);
        self.recent_components
            .retain(|_, (seq, _)| *seq > applied_seq);
    }
}

fn corrupt(why: impl std::fmt::Display) -> MeterError {
    MeterError::StoreCorrupt(format!("the log does not replay: {why}"))
}

fn broken(why: impl std::fmt::Display) -> MeterError {
    MeterError::StoreCorrupt(format!("the ledger's lots break an invariant: {why}"))
}

/// What the open lots hold; saturating, so that damaged figures read as too many
/// credits (which L1 refuses) rather than overflow.
fn open_remaining(lots: &[Lot]) -> i64 {
    lots.iter()
        .filter(|lot| lot.closed.is_none())
        .fold(0i64, |sum, lot| sum.saturating_add(lot.remaining))
}

/// The digest a decision of `batch` names by its index in the batch's policies.
fn batch_policy(batch: &Batch, index: u32) -> Result<Digest, MeterError> {
    batch
        .policies
        .get(index as usize)
        .copied()
        .ok_or_else(|| corrupt(format!("policy index {index} is not in its batch")))
}

impl LiveState {
    fn note_id(&mut self, kind: u8, id: &str) {
        if let Some(ids) = &mut self.ids {
            ids.insert(filter_hash(kind, id));
        }
    }

    fn insert_transaction(&mut self, record: TransactionRecord, seq: u64) {
        let id: Box<str> = record.id.as_str().into();
        if let Some((_, old)) = self.transactions.get(&id)
            && old.holds_credits()
        {
            self.open_holds -= 1;
            self.open_hold_bytes = self.open_hold_bytes.saturating_sub(old.heap_bytes());
        }
        if record.holds_credits() {
            self.open_holds += 1;
            self.open_hold_bytes = self.open_hold_bytes.saturating_add(record.heap_bytes());
            if let Some(expires_at_ms) = record.expires_at_ms {
                self.expiry.push(Reverse((expires_at_ms, id.clone())));
            }
        }
        self.transactions.insert(id.clone(), (seq, record));
        self.recent.push_back((seq, id));
    }

    fn require_loaded(&self, id: &str) -> Result<(), MeterError> {
        if self.transactions.contains_key(id) {
            Ok(())
        } else {
            Err(corrupt(format!(
                "transaction '{id}' closes but is not loaded"
            )))
        }
    }

    /// Closes an open transaction (settle or expiry), in place.
    fn close(
        &mut self,
        id: &str,
        seq: u64,
        state: TransactionState,
        receipt: Option<ReceiptRecord>,
    ) -> Result<(), MeterError> {
        let (last, record) = self
            .transactions
            .get_mut(id)
            .ok_or_else(|| corrupt(format!("transaction '{id}' closes but is not loaded")))?;
        if record.holds_credits() {
            self.open_holds -= 1;
            self.open_hold_bytes = self.open_hold_bytes.saturating_sub(record.heap_bytes());
        }
        record.state = state;
        record.receipt = receipt;
        record.held = AmountList::new();
        record.drawn = Vec::new();
        record.request = RequestRecord::default();
        *last = seq;
        self.recent.push_back((seq, id.into()));
        Ok(())
    }

    /// Sets a lot's state, adding it (and its expiry) when new.
    fn set_lot(&mut self, tenant: &str, balance: &str, lot: Lot) -> Result<(), MeterError> {
        let due = lot.expires_at_ms.filter(|_| lot.closed.is_none());
        let id = lot.id;
        let (index, added) = self.tenants.set_lot(tenant, balance, lot)?;
        if let (true, Some(expires_at_ms)) = (added, due) {
            self.lot_expiry.push(Reverse((expires_at_ms, id, index)));
        }
        Ok(())
    }

    fn insert_marks(&mut self, tenant: &str, marks: &[super::record::MarkRecord], seq: u64) {
        if marks.is_empty() {
            return;
        }
        let mut recent = self.marks.borrow_mut();
        for mark in marks {
            recent.insert(mark_key(tenant, &mark.scope, &mark.key), seq);
        }
    }

    fn set_posting(
        &mut self,
        tenant: &str,
        posting: &super::record::PostingRecord,
    ) -> Result<(), MeterError> {
        for (balance, state) in &posting.accounts {
            // Spending stops at minus the limit; an account a lowered limit left below
            // it may only come back up.
            let below_floor = state.available < 0 && {
                let floor = -super::overdraft_limit(&self.overdraft_limits(tenant), balance);
                let was = self
                    .tenants
                    .accounts(tenant)
                    .find(|(name, _)| name == balance)
                    .map_or(0, |(_, known)| known.available);
                state.available < floor && state.available < was
            };
            if state.held < 0 || below_floor {
                return Err(corrupt(format!(
                    "{tenant}/{balance} would be {state:?}: below zero held, or spent past \
                     its overdraft limit"
                )));
            }
        }
        self.set_accounts(
            tenant,
            posting
                .accounts
                .iter()
                .map(|(balance, state)| (balance, state)),
        )?;
        for (balance, lot) in &posting.lots {
            if lot.remaining < 0 || lot.remaining > lot.amount {
                return Err(corrupt(format!(
                    "lot {} of {tenant}/{balance} would hold {} of {}",
                    lot.id, lot.remaining, lot.amount
                )));
            }
            self.set_lot(tenant, balance, lot.clone())?;
        }
        self.next_entry_id = self
            .next_entry_id
            .saturating_add(posting.entries.len() as u64);
        Ok(())
    }

    /// Applies every decision of a batch: replay, and the view of a PostgreSQL replica.
    pub fn apply_batch(&mut self, batch: &Batch) -> Result<(), MeterError> {
        self.next_entry_id = batch.first_entry_id;
        for decision in &batch.decisions {
            self.apply(batch, decision)?;
        }
        Ok(())
    }

    /// The one way the state changes: the effect of a recorded decision of `batch`.
    /// Call in order: the journal entry ids of the batch follow from it.
    pub fn apply(&mut self, batch: &Batch, decision: &Decision) -> Result<(), MeterError> {
        let seq = batch.seq;
        let policy = |index: u32| batch_policy(batch, index);
        match decision {
            Decision::Authorize(authorized) => {
                let digest = policy(authorized.policy)?;
                self.set_posting(&authorized.tenant, &authorized.posting)?;
                self.note_id(ID_TRANSACTION, &authorized.id);
                let admitted = authorized.answer.admitted;
                self.insert_transaction(
                    TransactionRecord {
                        id: authorized.id.clone(),
                        tenant: authorized.tenant.clone(),
                        state: if admitted {
                            TransactionState::Open
                        } else {
                            TransactionState::Rejected
                        },
                        fingerprint: authorized.fingerprint,
                        policy: digest,
                        created_at_ms: batch.at_ms,
                        expires_at_ms: authorized.expires_at_ms,
                        operation: authorized.operation.clone(),
                        request: authorized.request.clone().unwrap_or_default(),
                        authorization: authorized.answer.clone(),
                        receipt: None,
                        held: if admitted {
                            authorized.answer.held.clone()
                        } else {
                            AmountList::new()
                        },
                        drawn: if admitted {
                            drawn_by(&authorized.posting.entries)
                        } else {
                            Vec::new()
                        },
                    },
                    seq,
                );
                self.insert_marks(&authorized.tenant, &authorized.marks, seq);
            }
            Decision::Settle(settled) => {
                self.require_loaded(&settled.id)?;
                self.set_posting(&settled.tenant, &settled.posting)?;
                self.close(
                    &settled.id,
                    seq,
                    TransactionState::Settled,
                    Some(settled.answer.clone()),
                )?;
                self.insert_marks(&settled.tenant, &settled.marks, seq);
            }
            Decision::Expire(expired) => {
                self.require_loaded(&expired.id)?;
                self.set_posting(&expired.tenant, &expired.posting)?;
                self.close(&expired.id, seq, TransactionState::Expired, None)?;
            }
            Decision::Grant(granted) => {
                let lot = granted.lot();
                self.set_posting(&granted.tenant, &granted.posting)?;
                if lot != LEGACY_LOT {
                    self.tenants.set_lot_grant(
                        &granted.tenant,
                        lot,
                        &granted.grant_id,
                        batch.at_ms,
                        &granted.terms,
                    );
                }
                self.note_id(ID_GRANT, &granted.grant_id);
                self.grants.insert(
                    granted.grant_id.as_str().into(),
                    (
                        seq,
                        GrantRecord {
                            tenant: granted.tenant.clone(),
                            balance: granted.balance.clone(),
                            amount: granted.amount,
                            lot,
                            terms: granted.terms.clone(),
                        },
                    ),
                );
                self.recent_grants
                    .push_back((seq, granted.grant_id.as_str().into()));
            }
            Decision::Policy(saved) => {
                let digest = policy(saved.policy)?;
                self.recent_components
                    .insert(digest, (seq, saved.component.clone()));
                self.policies.insert(
                    digest,
                    PolicyMeta {
                        name: saved.name.clone(),
                        version: saved.version.clone(),
                        balances: saved.balances.clone(),
                        hold_ttl_ms: saved.hold_ttl_ms,
                    },
                );
            }
            Decision::Activate(activation) => {
                self.active_policy = Some(policy(activation.policy)?);
            }
            Decision::Import(imported) => self.apply_import(batch, imported)?,
            Decision::CloseLot(closed) => {
                self.set_posting(&closed.tenant, &closed.posting)?;
                if let Some(watch) = self.tenants.watch(&closed.tenant, &closed.balance) {
                    let mut watch = watch.clone();
                    watch.forget_lot(closed.lot);
                    self.tenants
                        .set_watch(&closed.tenant, &closed.balance, Some(watch))?;
                }
            }
            Decision::Watch(set) => self.set_watch(&set.tenant, &set.balance, set.watch.clone())?,
            Decision::Event(event) => {
                if let Some(watch) = self.tenants.watch(&event.tenant, &event.balance) {
                    let mut watch = watch.clone();
                    watch.remember(&event.kind);
                    self.tenants
                        .set_watch(&event.tenant, &event.balance, Some(watch))?;
                }
            }
            Decision::Overdraft(set) => {
                self.set_overdraft_limit(&set.tenant, &set.balance, set.limit)?
            }
            Decision::Cap(set) => self.set_spend_cap(
                &set.tenant,
                &set.balance,
                set.cap.clone().map(|terms| (terms, set.window)),
            )?,
            Decision::Refill(set) => self.set_refill(
                &set.tenant,
                &set.refill_id,
                set.refill.clone().map(|terms| (terms, set.last_start_ms)),
            )?,
            Decision::Schedule(grant) => self.set_scheduled(grant.clone())?,
            Decision::Spend(spent) => {
                for (balance, window) in &spent.windows {
                    self.tenants
                        .set_cap_window(&spent.tenant, balance, *window)?;
                }
            }
        }
        self.last_seq = self.last_seq.max(seq);
        Ok(())
    }

    fn apply_import(
        &mut self,
        batch: &Batch,
        imported: &super::record::Imported,
    ) -> Result<(), MeterError> {
        let seq = batch.seq;
        let policy = |index: u32| batch_policy(batch, index);
        for (tenant, balance, state) in &imported.accounts {
            self.set_accounts(tenant, [(balance, state)])?;
        }
        for transaction in &imported.transactions {
            self.note_id(ID_TRANSACTION, &transaction.id);
            self.insert_transaction(
                TransactionRecord {
                    id: transaction.id.clone(),
                    tenant: transaction.tenant.clone(),
                    state: transaction.state,
                    fingerprint: transaction.fingerprint,
                    policy: policy(transaction.policy)?,
                    created_at_ms: transaction.created_at_ms,
                    expires_at_ms: transaction.expires_at_ms,
                    operation: transaction.operation.clone(),
                    request: transaction.request.clone(),
                    authorization: transaction.authorization.clone(),
                    receipt: transaction.receipt.clone(),
                    held: transaction.held.clone(),
                    drawn: Vec::new(),
                },
                seq,
            );
        }
        for entry in &imported.journal {
            self.next_entry_id = self.next_entry_id.max(entry.id.saturating_add(1));
        }
        {
            let mut recent = self.marks.borrow_mut();
            for (tenant, scope, key, _) in &imported.marks {
                recent.insert(mark_key(tenant, scope, key), seq);
            }
        }
        for grant in &imported.grants {
            self.note_id(ID_GRANT, &grant.grant_id);
            self.grants.insert(
                grant.grant_id.as_str().into(),
                (
                    seq,
                    GrantRecord {
                        tenant: grant.tenant.clone(),
                        balance: grant.balance.clone(),
                        amount: grant.amount,
                        lot: LEGACY_LOT,
                        terms: LotTerms::default(),
                    },
                ),
            );
            self.recent_grants
                .push_back((seq, grant.grant_id.as_str().into()));
        }
        if let Some(last) = imported.activations.last() {
            self.active_policy = Some(policy(last.policy)?);
        }
        Ok(())
    }
}

/// What a snapshot holds besides the tenants' accounts.
#[derive(Serialize, Deserialize)]
pub struct SnapshotTail {
    pub open_holds: Vec<TransactionRecord>,
    pub ids: Option<GrowableBloom>,
    pub marks: Option<GrowableBloom>,
    pub policies: Vec<(Digest, PolicyMeta)>,
    pub active_policy: Option<Digest>,
    pub next_entry_id: u64,
    pub last_seq: u64,
}

/// A slice of tenants with their accounts, as a snapshot stores them.
pub type TenantSlice = Vec<(String, Vec<(String, AccountState)>)>;

impl LiveState {
    /// Everything but the tenants, for the end of a snapshot.
    pub fn snapshot_tail(&self) -> SnapshotTail {
        SnapshotTail {
            open_holds: self
                .transactions
                .values()
                .map(|(_, record)| record)
                .filter(|record| record.holds_credits())
                .cloned()
                .collect(),
            ids: self.ids.clone(),
            marks: self.marks.borrow().filter.clone(),
            policies: self
                .policies
                .iter()
                .map(|(digest, meta)| (*digest, meta.clone()))
                .collect(),
            active_policy: self.active_policy,
            next_entry_id: self.next_entry_id,
            last_seq: self.last_seq,
        }
    }

    /// Loads a snapshot's tenants.
    pub fn restore_tenants(&mut self, slice: TenantSlice) -> Result<(), MeterError> {
        for (tenant, accounts) in slice {
            self.set_accounts(
                &tenant,
                accounts.iter().map(|(balance, state)| (balance, state)),
            )?;
        }
        Ok(())
    }

    /// Loads the rest of a snapshot.
    pub fn restore_tail(&mut self, tail: SnapshotTail) {
        for record in tail.open_holds {
            self.insert_transaction(record, 0);
        }
        if tail.ids.is_some() {
            self.ids = tail.ids;
        }
        if let Some(filter) = tail.marks {
            self.marks.borrow_mut().filter = Some(filter);
        }
        self.policies.extend(tail.policies);
        self.active_policy = tail.active_policy;
        self.next_entry_id = tail.next_entry_id;
        self.last_seq = tail.last_seq;
    }
}

pub(crate) const SNAPSHOT_TENANTS: &[u8; 4] = b"CGS1";
pub(crate) const SNAPSHOT_TAIL: &[u8; 4] = b"CGS2";
/// The lots of a slice of tenants (format 3).
pub(crate) const SNAPSHOT_LOTS: &[u8; 4] = b"CGS3";
/// The overdraft limits of a slice of tenants (format 4).
pub(crate) const SNAPSHOT_LIMITS: &[u8; 4] = b"CGS4";

/// The refills of a slice of tenants (format 5): `(tenant, refill, terms, last start)`.
pub type RefillPart = Vec<(String, String, RefillTerms, Option<i64>)>;
pub(crate) const SNAPSHOT_REFILLS: &[u8; 4] = b"CGS6";

pub fn encode_refills(slice: &RefillPart) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_REFILLS, slice)
}

/// The grants that take effect later of a slice of tenants (format 7).
pub type ScheduledPart = Vec<ScheduledGrant>;
pub(crate) const SNAPSHOT_SCHEDULED: &[u8; 4] = b"CGS8";

pub fn encode_scheduled(slice: &ScheduledPart) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_SCHEDULED, slice)
}

/// The watches of a slice of tenants (format 6).
pub(crate) const SNAPSHOT_WATCHES: &[u8; 4] = b"CGS7";

pub fn encode_watches(slice: &WatchPart) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_WATCHES, slice)
}

/// The spend caps of a slice of tenants (format 5).
pub(crate) const SNAPSHOT_CAPS: &[u8; 4] = b"CGS5";

pub fn encode_caps(slice: &CapPart) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_CAPS, slice)
}

pub fn encode_limits(slice: &LimitPart) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_LIMITS, slice)
}

pub fn encode_lots(slice: &LotPartOut<'_>) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_LOTS, slice)
}

fn decode_lots(bytes: &[u8]) -> Result<LotPart, super::codec::CodecError> {
    super::codec::decode_value(SNAPSHOT_LOTS, bytes)
}

pub fn encode_tenants(slice: &TenantSlice) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_TENANTS, slice)
}

pub fn decode_tenants(bytes: &[u8]) -> Result<TenantSlice, super::codec::CodecError> {
    super::codec::decode_value(SNAPSHOT_TENANTS, bytes)
}

pub fn encode_tail(tail: &SnapshotTail) -> Vec<u8> {
    super::codec::encode_value(SNAPSHOT_TAIL, tail)
}

pub fn decode_tail(bytes: &[u8]) -> Result<SnapshotTail, super::codec::CodecError> {
    let tail = super::codec::decode_tail(bytes)?;
    for filter in [&tail.ids, &tail.marks].into_iter().flatten() {
        filter_shape_sound(filter).map_err(super::codec::CodecError::Damaged)?;
    }
    Ok(tail)
}

/// A stored filter's parameters, as `growable-bloom-filter` serializes them (its fields
/// are private): read back to check them before the filter is used.
#[derive(Deserialize)]
struct FilterShape {
    blooms: Vec<(serde_bytes::ByteBuf, u64)>,
    desired_error_prob: f64,
    est_insertions: usize,
    inserts: usize,
    capacity: usize,
    growth_factor: usize,
    tightening_ratio: f64,
}

/// The filters are read from disk and the library panics (or allocates without
/// bound) on parameters it never makes: a slice shorter than one bit per hash, an
/// error rate outside (0, 1), a capacity whose next growth overflows or is far larger
/// than the filter read. Those are refused as damage.
fn filter_shape_sound(filter: &GrowableBloom) -> Result<(), String> {
    let bytes = postcard::to_allocvec(filter).map_err(|error| error.to_string())?;
    let shape: FilterShape = postcard::from_bytes(&bytes).map_err(|error| error.to_string())?;
    let unit = |value: f64| value > 0.0 && value < 1.0;
    let mut bits = 0u64;
    for (buffer, hashes) in &shape.blooms {
        let buffer_bits = (buffer.len() as u64).saturating_mul(8);
        if *hashes == 0 || *hashes > 64 || buffer_bits < *hashes {
            return Err(format!(
                "a filter has {hashes} hashes over {buffer_bits} bits"
            ));
        }
        bits = bits.saturating_add(buffer_bits);
    }
    // The next growth allocates about its capacity in bits, times the hashes: at most
    // a few times the filter already read, never more than the initial size beyond it.
    let next_capacity = u32::try_from(shape.blooms.len())
        .ok()
        .and_then(|grown| shape.growth_factor.checked_pow(grown))
        .and_then(|factor| shape.est_insertions.checked_mul(factor));
    let sound = unit(shape.desired_error_prob)
        && shape.desired_error_prob >= 1e-6
        && unit(shape.tightening_ratio)
        && shape.tightening_ratio >= 0.5
        && (2..=16).contains(&shape.growth_factor)
        && (1..=FILTER_INITIAL_ITEMS).contains(&shape.est_insertions)
        && shape.inserts <= shape.capacity
        && next_capacity.is_some_and(|next| {
            next as u64
                <= bits
                    .saturating_mul(shape.growth_factor as u64)
                    .max(FILTER_INITIAL_ITEMS as u64)
                && shape.capacity.checked_add(next).is_some()
        });
    if sound {
        Ok(())
    } else {
        Err("a filter's parameters are not ones this build makes".to_owned())
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    /// A tail whose id filter has one bloom of zero bits: the library divides by the
    /// bits per hash (a panic on the first lookup) unless decoding refuses it.
    #[test]
    fn a_snapshot_filter_with_impossible_parameters_is_refused_as_damage() {
        let mut live = LiveState::new(Coverage::Whole, StateLimits::default());
        let sound = encode_tail(&live.snapshot_tail());
        assert!(decode_tail(&sound).is_ok());
        let bloom = FilterShapeOut {
            blooms: vec![(serde_bytes::ByteBuf::new(), 7)],
            desired_error_prob: 0.01,
            est_insertions: 16,
            inserts: 0,
            capacity: 16,
            growth_factor: 2,
            tightening_ratio: 0.85,
        };
        let filter: GrowableBloom =
            postcard::from_bytes(&postcard::to_allocvec(&bloom).unwrap()).unwrap();
        live.ids = Some(filter);
        let damaged = encode_tail(&live.snapshot_tail());
        assert!(matches!(
            decode_tail(&damaged),
            Err(super::super::codec::CodecError::Damaged(_))
        ));
    }

    #[derive(Serialize)]
    struct FilterShapeOut {
        blooms: Vec<(serde_bytes::ByteBuf, u64)>,
        desired_error_prob: f64,
        est_insertions: usize,
        inserts: usize,
        capacity: usize,
        growth_factor: usize,
        tightening_ratio: f64,
    }
}
