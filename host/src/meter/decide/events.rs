//! The events of watched accounts ([`docs/credits.md`](../../../../docs/credits.md),
//! part 6): each is recorded in the batch whose decisions caused it, right after them
//! (balance levels: at the batch's end), so an event exists exactly when its cause was
//! committed. An account nobody watches raises none.

use std::slice::from_ref;

use super::{Decider, tenant_balances};
use crate::error::MeterError;
use crate::ledger::EntryKind;
use crate::ledger::caps::CapReached;
use crate::ledger::events::{self, EventKind, Thresholds, Watch};
use crate::ledger::record::{Decision, EventRecord, PostingRecord, WatchSet};
use crate::model::TenantBalances;

/// How often the sweep looks for lots to warn of: lead times are hours or days, and
/// the look reads every lot of every account that wants warnings.
const WARNING_SWEEP_EVERY_MS: i64 = 1_000;

impl Decider<'_> {
    /// Records `kind` for an account, if an operator watches it.
    pub(super) fn raise(
        &mut self,
        tenant: &str,
        balance: &str,
        kind: EventKind,
    ) -> Result<(), MeterError> {
        if self.state.watch(tenant, balance).is_none() {
            return Ok(());
        }
        self.builder.record(
            self.state,
            Decision::Event(EventRecord {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                kind,
            }),
        )
    }

    /// The credits a hold's release sends out of lots that closed while they were held
    /// (their `lot_expire` and `void` entries), as the events that say so: the lot's
    /// closing raised its remainder then; these are the rest, leaving now.
    pub(super) fn late_closings(
        &self,
        tenant: &str,
        posting: &PostingRecord,
    ) -> Vec<(String, EventKind)> {
        if !self.state.is_watched(tenant) {
            return Vec::new();
        }
        posting
            .entries
            .iter()
            .filter(|entry| matches!(entry.kind, EntryKind::LotExpire | EntryKind::Void))
            .filter_map(|entry| {
                let (_, info) = self.state.tenant_lot(tenant, entry.lot)?;
                let (lot, grant_id, amount) = (entry.lot, info.grant_id, entry.amount);
                let event = if entry.kind == EntryKind::Void {
                    EventKind::LotVoided {
                        lot,
                        grant_id,
                        amount,
                    }
                } else {
                    EventKind::LotExpired {
                        lot,
                        grant_id,
                        amount,
                    }
                };
                Some((entry.balance.clone(), event))
            })
            .collect()
    }

    /// Raises each `(balance, event)` of a watched account.
    pub(super) fn raise_all(
        &mut self,
        tenant: &str,
        events: Vec<(String, EventKind)>,
    ) -> Result<(), MeterError> {
        for (balance, event) in events {
            self.raise(tenant, &balance, event)?;
        }
        Ok(())
    }

    /// Raises `spend_cap_reached` for a refusal by the cap, once per window.
    pub(super) fn raise_cap_reached(
        &mut self,
        tenant: &str,
        balance: &str,
        reached: CapReached,
    ) -> Result<(), MeterError> {
        let new = self
            .state
            .watch(tenant, balance)
            .is_some_and(|watch| watch.cap_reached_is_new(reached.window_start_ms));
        if !new {
            return Ok(());
        }
        self.raise(
            tenant,
            balance,
            EventKind::SpendCapReached {
                cap: reached.cap,
                spent: reached.spent,
                asked: reached.asked,
                window_start_ms: reached.window_start_ms,
                resets_at_ms: reached.resets_at_ms,
            },
        )
    }

    /// Compares each watched account the batch moved with where it started, and raises
    /// the levels it fell through. Call once, after the batch's last decision.
    pub fn raise_balance_events(&mut self) -> Result<(), MeterError> {
        let moved = std::mem::take(&mut self.builder.watched_before);
        for ((tenant, balance), before) in moved {
            let Some(thresholds) = self
                .state
                .watch(&tenant, &balance)
                .map(|watch| watch.thresholds.clone())
            else {
                continue;
            };
            let after = self
                .state
                .accounts(&tenant, from_ref(&balance))
                .get(&balance)
                .map_or(0, |account| account.available);
            let reference = self.state.latest_grant(&tenant, &balance);
            for kind in events::crossings(&thresholds, reference, before, after) {
                self.raise(&tenant, &balance, kind)?;
            }
        }
        Ok(())
    }

    /// Raises `lot_expiring` for each open lot with credits left that expires within its
    /// account's lead time and was not warned of yet; returns how many. Looks at most
    /// once a second.
    pub(super) fn warn_expiring_lots(&mut self) -> Result<usize, MeterError> {
        let now_ms = self.now_ms();
        if now_ms < self.state.next_warning_sweep_ms {
            return Ok(0);
        }
        self.state.next_warning_sweep_ms = now_ms.saturating_add(WARNING_SWEEP_EVERY_MS);
        let mut warned = 0;
        for (tenant, balance) in self.state.watches_with_lead() {
            let Some(watch) = self.state.watch(&tenant, &balance).cloned() else {
                continue;
            };
            for (lot, info) in self.state.tenant_lots(&tenant) {
                let Some(expires_at_ms) = lot.expires_at_ms else {
                    continue;
                };
                // A lot due now expires in this batch: `lot_expired` says so.
                if info.balance != balance
                    || lot.closed.is_some()
                    || lot.remaining == 0
                    || expires_at_ms <= now_ms
                    || !watch.should_warn(lot.id, expires_at_ms, now_ms)
                {
                    continue;
                }
                self.raise(
                    &tenant,
                    &balance,
                    EventKind::LotExpiring {
                        lot: lot.id,
                        grant_id: info.grant_id,
                        remaining: lot.remaining,
                        expires_at_ms,
                    },
                )?;
                warned += 1;
            }
        }
        Ok(warned)
    }

    /// Sets (none: removes) what an operator watches on an account. New thresholds keep
    /// what the watch remembers (lots warned of, the window a cap was reached in);
    /// setting the thresholds the account has records nothing. Moves no credit.
    pub fn set_thresholds(
        &mut self,
        tenant: &str,
        balance: &str,
        thresholds: Option<Thresholds>,
    ) -> Result<TenantBalances, MeterError> {
        let info = self.policy_with_balance(balance)?;
        let accounts = self.accounts(tenant, &info.balances)?;
        let current = self.state.watch(tenant, balance).cloned();
        let set = match (thresholds, current) {
            (None, None) => None,
            (None, Some(_)) => Some(None),
            (Some(thresholds), Some(current)) if current.thresholds == thresholds => None,
            (Some(thresholds), Some(current)) => Some(Some(current.with_thresholds(thresholds))),
            (Some(thresholds), None) => Some(Some(Watch::new(thresholds))),
        };
        if let Some(watch) = set {
            self.builder.record(
                self.state,
                Decision::Watch(WatchSet {
                    tenant: tenant.to_owned(),
                    balance: balance.to_owned(),
                    watch,
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
}
