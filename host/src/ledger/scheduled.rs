//! Grants that take effect later (`effective_at_ms`): recorded when asked for, so the
//! grant id is taken from the first call, and granted by the sweep at their time
//! ([`docs/credits.md`](../../../docs/credits.md), part 1). Until then a scheduled grant
//! adds nothing to any balance; once granted it is a lot like any other and leaves this
//! table.
//!
//! Invariants kept here: a grant id is scheduled at most once; only a pending grant is
//! due; a grant that left the pending state never comes back to it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use super::record::LotTerms;

/// Where a scheduled grant stands. Stored: the order of the variants is part of the
/// record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduledState {
    /// Waiting for its time.
    Pending,
    /// Its time came and its lot was granted (the same batch records the grant): it
    /// leaves the table.
    Granted,
    /// An operator voided it before it took effect: nothing is ever granted, and the id
    /// stays taken.
    Voided,
    /// Its time came but the ledger could not grant it (its balance is no longer one of
    /// the active policy's, or the balance would pass the largest amount): nothing is
    /// granted, and the id stays taken.
    Refused,
}

impl ScheduledState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduledState::Pending => "pending",
            ScheduledState::Granted => "granted",
            ScheduledState::Voided => "voided",
            ScheduledState::Refused => "refused",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            ScheduledState::Pending,
            ScheduledState::Granted,
            ScheduledState::Voided,
            ScheduledState::Refused,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// A grant that takes effect at `effective_at_ms`, as it is after the decision that
/// recorded it. Added in record format 7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledGrant {
    pub grant_id: String,
    pub tenant: String,
    pub balance: String,
    pub amount: i64,
    pub terms: LotTerms,
    pub effective_at_ms: i64,
    pub state: ScheduledState,
}

/// The scheduled grants a ledger (SQLite) or a batch (PostgreSQL) knows, by grant id,
/// and the pending ones by time. Few: an operator schedules them one by one.
#[derive(Debug, Clone, Default)]
pub struct ScheduledGrants {
    by_id: BTreeMap<String, ScheduledGrant>,
    /// Pending grants by time; an entry whose grant left the pending state since is
    /// skipped.
    due: BinaryHeap<Reverse<(i64, String)>>,
}

impl ScheduledGrants {
    /// Sets a grant as a decision recorded it (or a store read it): a granted one
    /// leaves. `due`: whether the sweep may grant it in this batch (a PostgreSQL batch
    /// grants only for tenants it holds the lock of).
    pub fn set(&mut self, grant: ScheduledGrant, due: bool) {
        if grant.state == ScheduledState::Granted {
            self.by_id.remove(&grant.grant_id);
            return;
        }
        if due && grant.state == ScheduledState::Pending {
            self.due
                .push(Reverse((grant.effective_at_ms, grant.grant_id.clone())));
        }
        self.by_id.insert(grant.grant_id.clone(), grant);
    }

    pub fn get(&self, grant_id: &str) -> Option<&ScheduledGrant> {
        self.by_id.get(grant_id)
    }

    /// The pending grant whose time came first, if it came by `now_ms`, taken off the
    /// queue.
    pub fn next_due(&mut self, now_ms: i64) -> Option<ScheduledGrant> {
        while let Some(Reverse((effective_at_ms, _))) = self.due.peek() {
            if *effective_at_ms > now_ms {
                return None;
            }
            let Reverse((effective_at_ms, grant_id)) = self.due.pop()?;
            match self.by_id.get(&grant_id) {
                Some(grant)
                    if grant.state == ScheduledState::Pending
                        && grant.effective_at_ms == effective_at_ms =>
                {
                    return Some(grant.clone());
                }
                _ => continue,
            }
        }
        None
    }

    /// The tenant's scheduled grants, by time then id.
    pub fn of_tenant(&self, tenant: &str) -> Vec<&ScheduledGrant> {
        let mut grants: Vec<&ScheduledGrant> = self
            .by_id
            .values()
            .filter(|grant| grant.tenant == tenant)
            .collect();
        grants.sort_by(|a, b| {
            (a.effective_at_ms, &a.grant_id).cmp(&(b.effective_at_ms, &b.grant_id))
        });
        grants
    }

    /// The grants whose tenant `keep` accepts (a snapshot's slice of tenants).
    pub fn filtered(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<ScheduledGrant> {
        self.by_id
            .values()
            .filter(|grant| keep(&grant.tenant))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, at_ms: i64, state: ScheduledState) -> ScheduledGrant {
        ScheduledGrant {
            grant_id: id.to_owned(),
            tenant: "acme".to_owned(),
            balance: "credits".to_owned(),
            amount: 10,
            terms: LotTerms::default(),
            effective_at_ms: at_ms,
            state,
        }
    }

    #[test]
    fn pending_grants_come_due_in_time_order_once() {
        let mut table = ScheduledGrants::default();
        table.set(grant("b", 200, ScheduledState::Pending), true);
        table.set(grant("a", 100, ScheduledState::Pending), true);
        table.set(grant("c", 300, ScheduledState::Pending), true);
        assert_eq!(table.next_due(99), None);
        assert_eq!(
            table.next_due(250).map(|g| g.grant_id),
            Some("a".to_owned())
        );
        // The sweep grants it: it leaves.
        table.set(grant("a", 100, ScheduledState::Granted), true);
        assert_eq!(
            table.next_due(250).map(|g| g.grant_id),
            Some("b".to_owned())
        );
        table.set(grant("b", 200, ScheduledState::Refused), true);
        assert_eq!(table.next_due(250), None);
        assert!(table.get("a").is_none());
        assert_eq!(
            table.get("b").map(|g| g.state),
            Some(ScheduledState::Refused)
        );
        assert_eq!(table.of_tenant("acme").len(), 2);
    }

    #[test]
    fn a_voided_or_moved_grant_is_not_due_and_a_grant_loaded_without_due_never_is() {
        let mut table = ScheduledGrants::default();
        table.set(grant("a", 100, ScheduledState::Pending), true);
        table.set(grant("a", 100, ScheduledState::Voided), true);
        table.set(grant("b", 100, ScheduledState::Pending), false);
        assert_eq!(table.next_due(1_000), None);
        assert_eq!(table.of_tenant("acme").len(), 2);
        assert!(table.of_tenant("other").is_empty());
    }

    #[test]
    fn states_read_back_by_name() {
        for state in [
            ScheduledState::Pending,
            ScheduledState::Granted,
            ScheduledState::Voided,
            ScheduledState::Refused,
        ] {
            assert_eq!(ScheduledState::parse(state.as_str()), Some(state));
        }
        assert_eq!(ScheduledState::parse("open"), None);
    }
}
