//! Reading a transaction back: the views say where its decisions are in the log, the
//! log holds them. Used for cold lookups by the sequencer and for the audit by readers.

use rusqlite::{Connection, OptionalExtension, params};

use super::{to_i64, to_u64};
use crate::error::MeterError;
use crate::ledger::codec::{self, Header};
use crate::ledger::lots::LEGACY_LOT;
use crate::ledger::record::{
    Decision, Digest, EntryRecord, ImportedEntry, RequestRecord, TransactionState,
};
use crate::ledger::state::TransactionRecord;
use crate::model::JournalEntry;
use crate::policy::PolicyDigest;
use crate::store::StoreResult;

/// One decision of the log.
pub fn decision(log: &Connection, seq: u64, index: u64) -> StoreResult<(Header, Decision)> {
    let bytes: Vec<u8> = log
        .prepare_cached("SELECT record FROM log WHERE seq = ?1")?
        .query_row(params![to_i64(seq)], |row| row.get(0))
        .optional()?
        .ok_or_else(|| {
            MeterError::StoreCorrupt(format!("the views name log record {seq}, which is missing"))
        })?;
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    Ok(codec::decode_decision(&bytes, index)?)
}

fn policy_of(header: &Header, index: u32) -> StoreResult<Digest> {
    header.policies.get(index as usize).copied().ok_or_else(|| {
        MeterError::StoreCorrupt(format!(
            "log record {} names policy {index}, which it lacks",
            header.seq
        ))
    })
}

/// Journal lines of a decision whose first entry has id `first`.
fn journal_entries(
    entries: &[EntryRecord],
    first: u64,
    transaction_id: &str,
    tenant: &str,
    policy: &Digest,
    at_ms: u64,
) -> Vec<JournalEntry> {
    let digest = PolicyDigest::from_bytes(*policy).to_string();
    entries
        .iter()
        .enumerate()
        .map(|(offset, entry)| JournalEntry {
            id: to_i64(first + offset as u64),
            transaction_id: transaction_id.to_owned(),
            tenant: tenant.to_owned(),
            balance: entry.balance.clone(),
            kind: entry.kind.as_str().to_owned(),
            amount: entry.amount,
            lot: (entry.lot != LEGACY_LOT).then_some(entry.lot),
            policy_digest: digest.clone(),
            at_ms,
        })
        .collect()
}

fn damaged(id: &str, what: &str) -> MeterError {
    MeterError::StoreCorrupt(format!("transaction '{id}': the views point at {what}"))
}

/// A transaction as the ledger knows it after every batch the views applied, with its
/// journal entries when `with_entries`.
pub fn transaction(
    views: &Connection,
    log: &Connection,
    id: &str,
    with_entries: bool,
) -> StoreResult<Option<(TransactionRecord, Vec<JournalEntry>)>> {
    type Row = (
        i64,
        i64,
        Option<i64>,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = views
        .prepare_cached(
            "SELECT opened_seq, opened_index, opened_item, opened_entry, closed_seq, \
             closed_index, closed_entry FROM transactions WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        })
        .optional()?;
    let Some((
        opened_seq,
        opened_index,
        opened_item,
        opened_entry,
        closed_seq,
        closed_index,
        closed_entry,
    )) = row
    else {
        return Ok(None);
    };
    let (header, opened) = decision(log, to_u64(opened_seq), to_u64(opened_index))?;
    let mut entries = Vec::new();
    let mut record = match (opened, opened_item) {
        (Decision::Authorize(authorized), None) => {
            let policy = policy_of(&header, authorized.policy)?;
            if with_entries {
                entries.extend(journal_entries(
                    &authorized.posting.entries,
                    to_u64(opened_entry),
                    id,
                    &authorized.tenant,
                    &policy,
                    header.at_ms,
                ));
            }
            TransactionRecord {
                id: authorized.id,
                tenant: authorized.tenant,
                state: if authorized.answer.admitted {
                    TransactionState::Open
                } else {
                    TransactionState::Rejected
                },
                fingerprint: authorized.fingerprint,
                policy,
                created_at_ms: header.at_ms,
                expires_at_ms: authorized.expires_at_ms,
                operation: authorized.operation,
                request: authorized.request.unwrap_or_default(),
                held: if authorized.answer.admitted {
                    authorized.answer.held.clone()
                } else {
                    Vec::new()
                },
                drawn: if authorized.answer.admitted {
                    crate::ledger::state::drawn_by(&authorized.posting.entries)
                } else {
                    Vec::new()
                },
                authorization: authorized.answer,
                receipt: None,
            }
        }
        (Decision::Import(mut imported), Some(item)) => {
            let item = usize::try_from(item).unwrap_or(usize::MAX);
            if item >= imported.transactions.len() {
                return Err(damaged(id, "an imported row that is not there"));
            }
            if with_entries {
                for entry in imported
                    .journal
                    .iter()
                    .filter(|entry| entry.transaction_id == id)
                {
                    entries.push(imported_entry(&header, entry)?);
                }
            }
            let transaction = imported.transactions.swap_remove(item);
            TransactionRecord {
                id: transaction.id,
                tenant: transaction.tenant,
                state: transaction.state,
                fingerprint: transaction.fingerprint,
                policy: policy_of(&header, transaction.policy)?,
                created_at_ms: transaction.created_at_ms,
                expires_at_ms: transaction.expires_at_ms,
                operation: transaction.operation,
                request: transaction.request,
                authorization: transaction.authorization,
                receipt: transaction.receipt,
                held: transaction.held,
                drawn: Vec::new(),
            }
        }
        _ => return Err(damaged(id, "a decision that does not open it")),
    };
    if let (Some(seq), Some(index)) = (closed_seq, closed_index) {
        let (header, closed) = decision(log, to_u64(seq), to_u64(index))?;
        let first = to_u64(closed_entry.unwrap_or_default());
        match closed {
            Decision::Settle(settled) => {
                if with_entries {
                    let policy = policy_of(&header, settled.policy)?;
                    entries.extend(journal_entries(
                        &settled.posting.entries,
                        first,
                        id,
                        &record.tenant,
                        &policy,
                        header.at_ms,
                    ));
                }
                record.state = TransactionState::Settled;
                record.receipt = Some(settled.answer);
            }
            Decision::Expire(expired) => {
                if with_entries {
                    let policy = policy_of(&header, expired.policy)?;
                    entries.extend(journal_entries(
                        &expired.posting.entries,
                        first,
                        id,
                        &record.tenant,
                        &policy,
                        header.at_ms,
                    ));
                }
                record.state = TransactionState::Expired;
            }
            _ => return Err(damaged(id, "a decision that does not close it")),
        }
        record.held.clear();
        record.drawn.clear();
        record.request = RequestRecord::default();
    }
    Ok(Some((record, entries)))
}

/// A journal entry carried over from a ledger written before the log.
pub fn imported_entry(header: &Header, entry: &ImportedEntry) -> StoreResult<JournalEntry> {
    Ok(JournalEntry {
        id: to_i64(entry.id),
        transaction_id: entry.transaction_id.clone(),
        tenant: entry.tenant.clone(),
        balance: entry.balance.clone(),
        kind: entry.kind.as_str().to_owned(),
        amount: entry.amount,
        lot: None,
        policy_digest: PolicyDigest::from_bytes(policy_of(header, entry.policy)?).to_string(),
        at_ms: entry.at_ms,
    })
}

/// The journal entries a decision wrote, for `tenant` only (an import holds many
/// tenants'); the decision's first entry has id `first`.
pub fn decision_entries(
    header: &Header,
    decision: &Decision,
    first: u64,
    tenant: Option<&str>,
) -> StoreResult<Vec<JournalEntry>> {
    let (transaction_id, owner, policy) = match decision {
        Decision::Authorize(decision) => (&decision.id, &decision.tenant, decision.policy),
        Decision::Settle(decision) => (&decision.id, &decision.tenant, decision.policy),
        Decision::Expire(decision) => (&decision.id, &decision.tenant, decision.policy),
        Decision::Grant(decision) => (&decision.grant_id, &decision.tenant, decision.policy),
        Decision::CloseLot(decision) => (&decision.grant_id, &decision.tenant, decision.policy),
        Decision::Import(imported) => {
            return imported
                .journal
                .iter()
                .filter(|entry| tenant.is_none_or(|tenant| entry.tenant == tenant))
                .map(|entry| imported_entry(header, entry))
                .collect();
        }
        Decision::Policy(_)
        | Decision::Activate(_)
        | Decision::Overdraft(_)
        | Decision::Cap(_)
        | Decision::Spend(_)
        | Decision::Refill(_)
        | Decision::Watch(_)
        | Decision::Event(_)
        | Decision::Schedule(_) => {
            return Ok(Vec::new());
        }
    };
    if tenant.is_some_and(|tenant| tenant != owner) {
        return Ok(Vec::new());
    }
    Ok(journal_entries(
        decision.entries(),
        first,
        transaction_id,
        owner,
        &policy_of(header, policy)?,
        header.at_ms,
    ))
}
