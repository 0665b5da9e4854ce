//! Every tenant's accounts, compact: a million tenants is the common case, so a tenant
//! costs its name's bytes in one shared buffer, one 64-byte entry (two accounts
//! inline), and a 4-byte slot of a hash table: about 85 bytes by layout. Resident, with
//! the id filter and the allocator, `creditgate bench` measures ~125 bytes a tenant (its
//! "live state" line), against ~131 measured the same way for the map of boxed names to
//! vectors this table replaced.
//!
//! Tenants are never removed and keep the index they first got: a snapshot copies them
//! in index slices while the sequencer goes on.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::AccountState;
use super::caps::{AccountCap, CapTerms, CapWindow, SpendCaps};
use super::events::{Thresholds, Watch};
use super::lots::{Lot, LotId};
use super::record::{DEFAULT_CATEGORY, LotTerms};
use super::state::LotInfo;
use crate::error::MeterError;

/// The bytes of all tenants' names together, at most: a name's start is a `u32`.
pub const TENANT_NAME_BYTES_TOTAL_MAX: usize = u32::MAX as usize;
/// Distinct balance names the accounts can be on (a policy lists at most 16).
pub const BALANCE_NAMES_MAX: usize = u16::MAX as usize;

struct Tenant {
    name_start: u32,
    name_len: u16,
    /// (balance id, state), in the order the balances first appeared for this tenant.
    accounts: SmallVec<[(u16, AccountState); 2]>,
    /// The tenant's lots, closed ones included: a boxed slice, no spare capacity (a
    /// grant is rare beside the decisions that read them).
    lots: Box<[StoredLot]>,
}

/// A lot as the live state keeps it: its figures, its grant, and its labels only when
/// they are not the defaults (most grants).
struct StoredLot {
    balance: u16,
    lot: Lot,
    /// Its grant's id, in [`Tenants::grant_ids`].
    grant_id_start: u64,
    grant_id_len: u8,
    granted_at_ms: u64,
    labels: Option<Box<Labels>>,
}

/// The lots of a slice of tenants as a snapshot part stores them, borrowed from the
/// table: the ledger's balance names once, each tenant's name once, and labels only
/// when not the defaults. [`LotPart`] reads it back.
#[derive(Serialize)]
pub struct LotPartOut<'a> {
    balances: Vec<&'a str>,
    tenants: Vec<(&'a str, Vec<LotRowOut<'a>>)>,
}

impl LotPartOut<'_> {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

#[derive(Serialize)]
struct LotRowOut<'a> {
    /// Index into the part's balances.
    balance: u16,
    lot: &'a Lot,
    grant_id: &'a str,
    granted_at_ms: u64,
    labels: Option<(&'a str, &'a [(String, String)])>,
}

/// A snapshot part of lots, read.
#[derive(Deserialize)]
pub struct LotPart {
    balances: Vec<String>,
    tenants: Vec<(String, Vec<LotRow>)>,
}

#[derive(Deserialize)]
struct LotRow {
    balance: u16,
    lot: Lot,
    grant_id: String,
    granted_at_ms: u64,
    labels: Option<(String, Vec<(String, String)>)>,
}

impl Tenants {
    /// Restores a snapshot's lots part: each tenant's lots set at once, with their
    /// grants. Answers `(expiry, lot, tenant index)` of the open lots that expire.
    /// Refuses a balance index the part does not have, and a lot listed twice.
    pub fn restore_lots(&mut self, part: LotPart) -> Result<Vec<(i64, LotId, u32)>, MeterError> {
        let damaged = |why: String| MeterError::StoreCorrupt(format!("a snapshot's lots: {why}"));
        let mut ids = Vec::with_capacity(part.balances.len());
        for name in &part.balances {
            ids.push(self.balance_id(name)?);
        }
        let mut expiring = Vec::new();
        for (name, rows) in part.tenants {
            let index = self.find_or_insert(&name)?;
            let mut lots = std::mem::take(&mut self.tenants[index].lots).into_vec();
            lots.reserve_exact(rows.len());
            for row in rows {
                let balance = *ids.get(usize::from(row.balance)).ok_or_else(|| {
                    damaged(format!(
                        "a lot names balance {} of {}",
                        row.balance,
                        ids.len()
                    ))
                })?;
                if lots.iter().any(|stored| stored.lot.id == row.lot.id) {
                    return Err(damaged(format!("lot {} is listed twice", row.lot.id)));
                }
                if let (Some(at), None) = (row.lot.expires_at_ms, row.lot.closed) {
                    expiring.push((at, row.lot.id, index as u32));
                }
                let (grant_id_start, grant_id_len) = self.arena_grant_id(&row.grant_id);
                lots.push(StoredLot {
                    balance,
                    lot: row.lot,
                    grant_id_start,
                    grant_id_len,
                    granted_at_ms: row.granted_at_ms,
                    labels: row.labels.map(|(category, metadata)| {
                        Box::new(Labels {
                            category: category.into(),
                            metadata: metadata.into_boxed_slice(),
                        })
                    }),
                });
            }
            self.tenants[index].lots = lots.into_boxed_slice();
        }
        Ok(expiring)
    }

    /// Appends a grant id to the arena: where it starts and its length. Ids are at most
    /// 128 bytes (`meter::validate`); a longer one (damage in a store) is kept cut at a
    /// character boundary.
    fn arena_grant_id(&mut self, grant_id: &str) -> (u64, u8) {
        let mut len = grant_id.len().min(usize::from(u8::MAX));
        while !grant_id.is_char_boundary(len) {
            len -= 1;
        }
        let start = self.grant_ids.len() as u64;
        self.grant_ids
            .extend_from_slice(&grant_id.as_bytes()[..len]);
        (start, len as u8)
    }

    /// The first account whose open lots hold more than it has available (L1):
    /// `(tenant, balance, in lots, available)`.
    pub fn lots_beyond_available(&self) -> Option<(String, String, i64, i64)> {
        for tenant in &self.tenants {
            for (balance, state) in &tenant.accounts {
                let in_lots = tenant
                    .lots
                    .iter()
                    .filter(|stored| stored.balance == *balance && stored.lot.closed.is_none())
                    .fold(0i64, |sum, stored| sum.saturating_add(stored.lot.remaining));
                if in_lots > state.available.max(0) {
                    return Some((
                        self.name_of(tenant).to_owned(),
                        self.balance_names
                            .get(usize::from(*balance))
                            .map(|name| name.to_string())
                            .unwrap_or_default(),
                        in_lots,
                        state.available,
                    ));
                }
            }
            // Lots on a balance the tenant has no account of hold credits nowhere.
            if let Some(stored) = tenant.lots.iter().find(|stored| {
                stored.lot.closed.is_none()
                    && stored.lot.remaining > 0
                    && !tenant
                        .accounts
                        .iter()
                        .any(|(balance, _)| *balance == stored.balance)
            }) {
                return Some((
                    self.name_of(tenant).to_owned(),
                    self.balance_names
                        .get(usize::from(stored.balance))
                        .map(|name| name.to_string())
                        .unwrap_or_default(),
                    stored.lot.remaining,
                    0,
                ));
            }
        }
        None
    }
}

/// A lot's category and metadata, when not `paid` and none.
struct Labels {
    category: Box<str>,
    metadata: Box<[(String, String)]>,
}

impl StoredLot {
    fn terms(&self) -> LotTerms {
        LotTerms {
            expires_at_ms: self.lot.expires_at_ms,
            priority: self.lot.priority,
            category: self
                .labels
                .as_ref()
                .map_or(DEFAULT_CATEGORY, |labels| &labels.category)
                .to_owned(),
            metadata: self
                .labels
                .as_ref()
                .map(|labels| labels.metadata.to_vec())
                .unwrap_or_default(),
        }
    }
}

fn labels(terms: &LotTerms) -> Option<Box<Labels>> {
    (terms.category != DEFAULT_CATEGORY || !terms.metadata.is_empty()).then(|| {
        Box::new(Labels {
            category: terms.category.as_str().into(),
            metadata: terms.metadata.clone().into_boxed_slice(),
        })
    })
}

#[derive(Default)]
pub struct Tenants {
    names: Vec<u8>,
    tenants: Vec<Tenant>,
    /// Indices into `tenants`, by the hash of the name.
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    balance_names: Vec<Box<str>>,
    balance_ids: hashbrown::HashMap<Box<str>, u16>,
    /// The grant ids of every lot, end to end: a lot keeps where its id is.
    grant_ids: Vec<u8>,
    /// Overdraft limits by (tenant index, balance id), only those set above 0: most
    /// accounts have none, and pay nothing for it.
    overdraft_limits: hashbrown::HashMap<(u32, u16), i64>,
    /// Spend caps and their windows by (tenant index, balance id), only capped
    /// accounts.
    caps: hashbrown::HashMap<(u32, u16), AccountCap>,
    /// What operators watch, by (tenant index, balance id), only watched accounts.
    watches: hashbrown::HashMap<(u32, u16), Watch>,
    /// How many accounts of each tenant are watched.
    watched_tenants: hashbrown::HashMap<u32, u32>,
}

/// The watches of a slice of tenants, as a snapshot part stores them:
/// `(tenant, balance, watch)`.
pub type WatchPart = Vec<(String, String, Watch)>;

/// The spend caps of a slice of tenants, as a snapshot part stores them:
/// `(tenant, balance, cap, window)`.
pub type CapPart = Vec<(String, String, CapTerms, CapWindow)>;

/// The overdraft limits of a slice of tenants, as a snapshot part stores them:
/// `(tenant, balance, limit)`.
pub type LimitPart = Vec<(String, String, i64)>;

impl Tenants {
    fn grant_id_of(&self, stored: &StoredLot) -> &str {
        let start = usize::try_from(stored.grant_id_start).unwrap_or(usize::MAX);
        self.grant_ids
            .get(start..start.saturating_add(usize::from(stored.grant_id_len)))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }

    fn name_of(&self, tenant: &Tenant) -> &str {
        let start = tenant.name_start as usize;
        // Names are whole `&str`s appended by `insert`; never split.
        std::str::from_utf8(&self.names[start..start + usize::from(tenant.name_len)])
            .unwrap_or_default()
    }

    fn find(&self, name: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        self.index
            .find(hash, |&index| {
                self.tenants
                    .get(index as usize)
                    .is_some_and(|tenant| self.name_of(tenant) == name)
            })
            .map(|&index| index as usize)
    }

    fn find_or_insert(&mut self, name: &str) -> Result<usize, MeterError> {
        if let Some(index) = self.find(name) {
            return Ok(index);
        }
        let too_many = |what: &str| {
            MeterError::StoreUnavailable(format!("the ledger holds the most {what} it can"))
        };
        let name_start = u32::try_from(self.names.len())
            .ok()
            .filter(|start| (*start as usize) + name.len() <= TENANT_NAME_BYTES_TOTAL_MAX)
            .ok_or_else(|| too_many("tenant names"))?;
        let name_len = u16::try_from(name.len()).map_err(|_| too_many("bytes in a tenant name"))?;
        let index = u32::try_from(self.tenants.len()).map_err(|_| too_many("tenants"))?;
        self.names.extend_from_slice(name.as_bytes());
        self.tenants.push(Tenant {
            name_start,
            name_len,
            accounts: SmallVec::new(),
            lots: Box::default(),
        });
        let hash = self.hasher.hash_one(name);
        let (names, tenants, hasher) = (&self.names, &self.tenants, &self.hasher);
        self.index.insert_unique(hash, index, |&index| {
            let tenant = &tenants[index as usize];
            let start = tenant.name_start as usize;
            hasher.hash_one(
                std::str::from_utf8(&names[start..start + usize::from(tenant.name_len)])
                    .unwrap_or_default(),
            )
        });
        Ok(index as usize)
    }

    fn balance_id(&mut self, name: &str) -> Result<u16, MeterError> {
        if let Some(id) = self.balance_ids.get(name) {
            return Ok(*id);
        }
        let id = u16::try_from(self.balance_names.len())
            .ok()
            .filter(|id| usize::from(*id) < BALANCE_NAMES_MAX)
            .ok_or_else(|| {
                MeterError::StoreUnavailable(format!(
                    "the ledger already has {BALANCE_NAMES_MAX} balance names"
                ))
            })?;
        self.balance_names.push(name.into());
        self.balance_ids.insert(name.into(), id);
        Ok(id)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The tenant's existing accounts, by balance name.
    pub fn accounts(&self, name: &str) -> impl Iterator<Item = (&str, AccountState)> {
        self.find(name)
            .and_then(|index| self.tenants.get(index))
            .into_iter()
            .flat_map(|tenant| tenant.accounts.iter())
            .filter_map(|(id, state)| {
                Some((self.balance_names.get(usize::from(*id))?.as_ref(), *state))
            })
    }

    /// Sets account states of a tenant, adding the tenant and the accounts it lacks.
    pub fn set<'a>(
        &mut self,
        name: &str,
        states: impl IntoIterator<Item = (&'a String, &'a AccountState)>,
    ) -> Result<(), MeterError> {
        let mut updates: SmallVec<[(u16, AccountState); 4]> = SmallVec::new();
        for (balance, state) in states {
            updates.push((self.balance_id(balance)?, *state));
        }
        let index = self.find_or_insert(name)?;
        let Some(tenant) = self.tenants.get_mut(index) else {
            return Ok(());
        };
        for (id, state) in updates {
            match tenant.accounts.iter_mut().find(|(known, _)| *known == id) {
                Some((_, known)) => *known = state,
                None => tenant.accounts.push((id, state)),
            }
        }
        Ok(())
    }

    /// Sets the overdraft limit of an account (0 removes it), adding the tenant if new.
    pub fn set_overdraft_limit(
        &mut self,
        name: &str,
        balance: &str,
        limit: i64,
    ) -> Result<(), MeterError> {
        let key = self.account_key(name, balance)?;
        if limit > 0 {
            self.overdraft_limits.insert(key, limit);
        } else {
            self.overdraft_limits.remove(&key);
        }
        Ok(())
    }

    /// The tenant's overdraft limits, by balance name (those above 0).
    pub fn overdraft_limits(&self, name: &str) -> crate::ledger::OverdraftLimits {
        let mut limits = crate::ledger::OverdraftLimits::new();
        if self.overdraft_limits.is_empty() {
            return limits;
        }
        let Some(index) = self.index_of(name) else {
            return limits;
        };
        for (id, balance) in self.balance_names.iter().enumerate() {
            let Ok(id) = u16::try_from(id) else { break };
            if let Some(limit) = self.overdraft_limits.get(&(index, id)) {
                limits.insert(balance.to_string(), *limit);
            }
        }
        limits
    }

    /// Sets or removes the spend cap of an account, adding the tenant if new.
    pub fn set_spend_cap(
        &mut self,
        name: &str,
        balance: &str,
        cap: Option<AccountCap>,
    ) -> Result<(), MeterError> {
        let key = self.account_key(name, balance)?;
        match cap {
            Some(cap) => self.caps.insert(key, cap),
            None => self.caps.remove(&key),
        };
        Ok(())
    }

    /// Sets the window of a capped account.
    pub fn set_cap_window(
        &mut self,
        name: &str,
        balance: &str,
        window: CapWindow,
    ) -> Result<(), MeterError> {
        let key = self.account_key(name, balance)?;
        let capped = self.caps.get_mut(&key).ok_or_else(|| {
            MeterError::StoreCorrupt(format!(
                "a spend window of {name}/{balance}, which has no spend cap"
            ))
        })?;
        capped.window = window;
        Ok(())
    }

    /// The tenant's capped accounts, by balance name.
    pub fn spend_caps(&self, name: &str) -> SpendCaps {
        let mut caps = SpendCaps::new();
        if self.caps.is_empty() {
            return caps;
        }
        let Some(index) = self.index_of(name) else {
            return caps;
        };
        for (id, balance) in self.balance_names.iter().enumerate() {
            let Ok(id) = u16::try_from(id) else { break };
            if let Some(cap) = self.caps.get(&(index, id)) {
                caps.insert(balance.to_string(), cap.clone());
            }
        }
        caps
    }

    /// The spend caps of tenants `start..end`.
    pub fn cap_slice(&self, start: usize, end: usize) -> CapPart {
        let mut part: CapPart = self
            .caps
            .iter()
            .filter(|((index, _), _)| (start..end).contains(&(*index as usize)))
            .filter_map(|((index, balance), capped)| {
                Some((
                    self.name_at(*index)?.to_owned(),
                    self.balance_names.get(usize::from(*balance))?.to_string(),
                    capped.cap.terms.clone(),
                    capped.window,
                ))
            })
            .collect();
        part.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        part
    }

    /// Sets or removes the watch of an account, adding the tenant if new.
    pub fn set_watch(
        &mut self,
        name: &str,
        balance: &str,
        watch: Option<Watch>,
    ) -> Result<(), MeterError> {
        let key = self.account_key(name, balance)?;
        let was = match watch {
            Some(watch) => self.watches.insert(key, watch),
            None => self.watches.remove(&key),
        };
        let now = self.watches.contains_key(&key);
        let count = self.watched_tenants.entry(key.0).or_default();
        match (was.is_some(), now) {
            (false, true) => *count += 1,
            (true, false) => *count -= 1,
            _ => {}
        }
        if *count == 0 {
            self.watched_tenants.remove(&key.0);
        }
        Ok(())
    }

    /// The watch of an account, if an operator watches it.
    pub fn watch(&self, name: &str, balance: &str) -> Option<&Watch> {
        if self.watches.is_empty() {
            return None;
        }
        let index = self.index_of(name)?;
        let balance = self.balance_ids.get(balance)?;
        self.watches.get(&(index, *balance))
    }

    /// The tenant's watched accounts' thresholds, by balance name.
    pub fn thresholds(&self, name: &str) -> BTreeMap<String, Thresholds> {
        let mut watched = BTreeMap::new();
        if !self.is_watched(name) {
            return watched;
        }
        let Some(index) = self.index_of(name) else {
            return watched;
        };
        for (id, balance) in self.balance_names.iter().enumerate() {
            let Ok(id) = u16::try_from(id) else { break };
            if let Some(watch) = self.watches.get(&(index, id)) {
                watched.insert(balance.to_string(), watch.thresholds.clone());
            }
        }
        watched
    }

    /// Whether any account of the tenant is watched: the cost of events on the path of
    /// a tenant nobody watches is this lookup.
    pub fn is_watched(&self, name: &str) -> bool {
        !self.watched_tenants.is_empty()
            && self
                .index_of(name)
                .is_some_and(|index| self.watched_tenants.contains_key(&index))
    }

    /// The watched accounts that want lots warned of before they expire:
    /// `(tenant, balance)`.
    pub fn watches_with_lead(&self) -> Vec<(String, String)> {
        let mut due: Vec<(String, String)> = self
            .watches
            .iter()
            .filter(|(_, watch)| watch.thresholds.lot_expiring_lead_ms.is_some())
            .filter_map(|((index, balance), _)| {
                Some((
                    self.name_at(*index)?.to_owned(),
                    self.balance_names.get(usize::from(*balance))?.to_string(),
                ))
            })
            .collect();
        due.sort();
        due
    }

    /// The watches of tenants `start..end`.
    pub fn watch_slice(&self, start: usize, end: usize) -> WatchPart {
        let mut part: WatchPart = self
            .watches
            .iter()
            .filter(|((index, _), _)| (start..end).contains(&(*index as usize)))
            .filter_map(|((index, balance), watch)| {
                Some((
                    self.name_at(*index)?.to_owned(),
                    self.balance_names.get(usize::from(*balance))?.to_string(),
                    watch.clone(),
                ))
            })
            .collect();
        part.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        part
    }

    /// The key of an account in the maps of the few accounts that have a setting.
    fn account_key(&mut self, name: &str, balance: &str) -> Result<(u32, u16), MeterError> {
        let balance = self.balance_id(balance)?;
        let index = u32::try_from(self.find_or_insert(name)?).map_err(|_| {
            MeterError::StoreUnavailable("more tenants than the table can number".to_owned())
        })?;
        Ok((index, balance))
    }

    /// The overdraft limits of tenants `start..end`.
    pub fn limit_slice(&self, start: usize, end: usize) -> LimitPart {
        let mut part: LimitPart = self
            .overdraft_limits
            .iter()
            .filter(|((index, _), _)| (start..end).contains(&(*index as usize)))
            .filter_map(|((index, balance), limit)| {
                Some((
                    self.name_at(*index)?.to_owned(),
                    self.balance_names.get(usize::from(*balance))?.to_string(),
                    *limit,
                ))
            })
            .collect();
        part.sort();
        part
    }

    /// The tenant's index (stable: tenants are never removed).
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.find(name).and_then(|index| u32::try_from(index).ok())
    }

    pub fn name_at(&self, index: u32) -> Option<&str> {
        self.tenants
            .get(index as usize)
            .map(|tenant| self.name_of(tenant))
    }

    /// The lots of the tenant at `index` on `balance`, closed ones included.
    pub fn account_lots(&self, name: &str, balance: &str) -> Vec<Lot> {
        let (Some(index), Some(balance)) = (self.find(name), self.balance_ids.get(balance)) else {
            return Vec::new();
        };
        self.tenants[index]
            .lots
            .iter()
            .filter(|stored| stored.balance == *balance)
            .map(|stored| stored.lot.clone())
            .collect()
    }

    /// Whether the tenant at `index` has lot `id` open, expiring at `expires_at_ms`:
    /// answers its balance.
    pub fn open_lot_at(&self, index: u32, id: LotId, expires_at_ms: i64) -> Option<&str> {
        let tenant = self.tenants.get(index as usize)?;
        let stored = tenant.lots.iter().find(|stored| stored.lot.id == id)?;
        (stored.lot.closed.is_none() && stored.lot.expires_at_ms == Some(expires_at_ms))
            .then(|| self.balance_names.get(usize::from(stored.balance)))
            .flatten()
            .map(AsRef::as_ref)
    }

    /// The tenant's open lots whose expiry is at or before `now_ms`: `(balance, lot)`.
    pub fn due_lots(&self, name: &str, now_ms: i64) -> Vec<(String, LotId)> {
        let Some(index) = self.find(name) else {
            return Vec::new();
        };
        self.tenants[index]
            .lots
            .iter()
            .filter(|stored| {
                stored.lot.closed.is_none()
                    && stored.lot.expires_at_ms.is_some_and(|at| at <= now_ms)
            })
            .map(|stored| {
                (
                    self.balance_names
                        .get(usize::from(stored.balance))
                        .map(|name| name.to_string())
                        .unwrap_or_default(),
                    stored.lot.id,
                )
            })
            .collect()
    }

    /// Every lot of the tenant, with its grant.
    pub fn lots(&self, name: &str) -> Vec<(Lot, LotInfo)> {
        match self.find(name) {
            Some(index) => self.lots_at(index),
            None => Vec::new(),
        }
    }

    fn lots_at(&self, index: usize) -> Vec<(Lot, LotInfo)> {
        let tenant = &self.tenants[index];
        tenant
            .lots
            .iter()
            .map(|stored| {
                (
                    stored.lot.clone(),
                    LotInfo {
                        tenant: self.name_of(tenant).to_owned(),
                        balance: self
                            .balance_names
                            .get(usize::from(stored.balance))
                            .map(|name| name.to_string())
                            .unwrap_or_default(),
                        grant_id: self.grant_id_of(stored).to_owned(),
                        terms: stored.terms(),
                        granted_at_ms: stored.granted_at_ms,
                    },
                )
            })
            .collect()
    }

    /// The lots of tenants `start..end`, borrowed, as a snapshot part stores them.
    pub fn lot_slice(&self, start: usize, end: usize) -> LotPartOut<'_> {
        let end = end.min(self.tenants.len());
        LotPartOut {
            balances: self.balance_names.iter().map(AsRef::as_ref).collect(),
            tenants: self.tenants[start.min(end)..end]
                .iter()
                .filter(|tenant| !tenant.lots.is_empty())
                .map(|tenant| {
                    let rows = tenant
                        .lots
                        .iter()
                        .map(|stored| LotRowOut {
                            balance: stored.balance,
                            lot: &stored.lot,
                            grant_id: self.grant_id_of(stored),
                            granted_at_ms: stored.granted_at_ms,
                            labels: stored
                                .labels
                                .as_ref()
                                .map(|labels| (labels.category.as_ref(), labels.metadata.as_ref())),
                        })
                        .collect();
                    (self.name_of(tenant), rows)
                })
                .collect(),
        }
    }

    /// Every lot of every tenant.
    pub fn all_lots(&self) -> Vec<(Lot, LotInfo)> {
        (0..self.tenants.len())
            .filter(|index| !self.tenants[*index].lots.is_empty())
            .flat_map(|index| self.lots_at(index))
            .collect()
    }

    /// Sets a lot's figures, adding it (with no grant yet) when new. Answers the
    /// tenant's index and whether the lot is new.
    pub fn set_lot(
        &mut self,
        name: &str,
        balance: &str,
        lot: Lot,
    ) -> Result<(u32, bool), MeterError> {
        let balance = self.balance_id(balance)?;
        let index = self.find_or_insert(name)?;
        let tenant = &mut self.tenants[index];
        let added = match tenant
            .lots
            .iter_mut()
            .find(|stored| stored.balance == balance && stored.lot.id == lot.id)
        {
            Some(stored) => {
                stored.lot = lot;
                false
            }
            None => {
                // Exactly one more: no spare capacity to give back (and fragment).
                let mut lots = Vec::with_capacity(tenant.lots.len() + 1);
                lots.extend(std::mem::take(&mut tenant.lots).into_vec());
                lots.push(StoredLot {
                    balance,
                    lot,
                    grant_id_start: 0,
                    grant_id_len: 0,
                    granted_at_ms: 0,
                    labels: None,
                });
                tenant.lots = lots.into_boxed_slice();
                true
            }
        };
        Ok((u32::try_from(index).unwrap_or(u32::MAX), added))
    }

    /// Records the grant a lot of the tenant came from.
    pub fn set_lot_grant(
        &mut self,
        name: &str,
        id: LotId,
        grant_id: &str,
        granted_at_ms: u64,
        terms: &LotTerms,
    ) {
        let Some(index) = self.find(name) else {
            return;
        };
        let Some(at) = self.tenants[index]
            .lots
            .iter()
            .position(|stored| stored.lot.id == id)
        else {
            return;
        };
        // A replay sets the grant of a lot the snapshot had: its id is there already.
        if self.grant_id_of(&self.tenants[index].lots[at]) != grant_id {
            let (start, len) = self.arena_grant_id(grant_id);
            let stored = &mut self.tenants[index].lots[at];
            stored.grant_id_start = start;
            stored.grant_id_len = len;
        }
        let stored = &mut self.tenants[index].lots[at];
        stored.granted_at_ms = granted_at_ms;
        stored.labels = labels(terms);
    }

    /// Adds a tenant with no accounts (a store read it and found none).
    pub fn touch(&mut self, name: &str) -> Result<(), MeterError> {
        self.find_or_insert(name).map(|_| ())
    }

    /// Tenants `start..end` in the order they appeared, with their accounts.
    pub fn slice(&self, start: usize, end: usize) -> Vec<(String, Vec<(String, AccountState)>)> {
        let end = end.min(self.tenants.len());
        self.tenants[start.min(end)..end]
            .iter()
            .map(|tenant| {
                let accounts = tenant
                    .accounts
                    .iter()
                    .filter_map(|(id, state)| {
                        Some((
                            self.balance_names.get(usize::from(*id))?.to_string(),
                            *state,
                        ))
                    })
                    .collect();
                (self.name_of(tenant).to_owned(), accounts)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_found_by_name_and_keep_their_order() {
        let mut tenants = Tenants::default();
        let default = "default".to_owned();
        for index in 0..10_000 {
            let state = AccountState {
                available: index,
                held: 0,
            };
            tenants
                .set(&format!("tenant-{index}"), [(&default, &state)])
                .unwrap();
        }
        assert_eq!(tenants.len(), 10_000);
        let found: Vec<_> = tenants.accounts("tenant-4242").collect();
        assert_eq!(
            found,
            [(
                "default",
                AccountState {
                    available: 4242,
                    held: 0
                }
            )]
        );
        assert!(!tenants.contains("tenant-10000"));
        let slice = tenants.slice(4242, 4243);
        assert_eq!(slice[0].0, "tenant-4242");
    }
}
