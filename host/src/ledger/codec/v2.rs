//! The decisions of record formats 1 and 2, frozen: format 3 added a lot to each
//! journal entry, lot states to each posting and terms to each grant, which changes
//! the layout postcard reads. Records written before read through these types and
//! become today's: every entry moved the legacy lot, no posting touched a lot, and
//! every grant has the default terms. Never change these types.

use serde::Deserialize;

use super::super::lots::LEGACY_LOT;
use super::super::record::{
    self, Activation, AuthorizationRecord, Decision, Digest, Imported, LotTerms, MarkRecord,
    PolicyRecord, ReceiptRecord, RequestRecord,
};
use super::super::state::{PolicyMeta, SnapshotTail, TransactionRecord};
use super::super::{AccountState, EntryKind};
use growable_bloom_filter::GrowableBloom;

#[derive(Deserialize)]
pub(super) enum DecisionV2 {
    Authorize(AuthorizedV2),
    Settle(SettledV2),
    Expire(ExpiredV2),
    Grant(GrantedV2),
    Policy(PolicyRecord),
    Activate(Activation),
    Import(Imported),
}

#[derive(Deserialize)]
pub(super) struct AuthorizedV2 {
    id: String,
    tenant: String,
    fingerprint: Digest,
    policy: u32,
    operation: String,
    request: Option<RequestRecord>,
    answer: AuthorizationRecord,
    expires_at_ms: Option<u64>,
    posting: PostingV2,
    marks: Vec<MarkRecord>,
}

#[derive(Deserialize)]
pub(super) struct SettledV2 {
    id: String,
    tenant: String,
    policy: u32,
    status: u16,
    answer: ReceiptRecord,
    posting: PostingV2,
    marks: Vec<MarkRecord>,
}

#[derive(Deserialize)]
pub(super) struct ExpiredV2 {
    id: String,
    tenant: String,
    policy: u32,
    posting: PostingV2,
}

#[derive(Deserialize)]
pub(super) struct GrantedV2 {
    grant_id: String,
    tenant: String,
    balance: String,
    amount: i64,
    policy: u32,
    posting: PostingV2,
}

#[derive(Deserialize)]
pub(super) struct PostingV2 {
    entries: Vec<EntryV2>,
    accounts: Vec<(String, AccountState)>,
}

/// The entry kinds of formats 1 and 2 are a prefix of today's: the enum is shared.
#[derive(Deserialize)]
pub(super) struct EntryV2 {
    balance: String,
    kind: EntryKind,
    amount: i64,
}

impl From<PostingV2> for record::PostingRecord {
    fn from(posting: PostingV2) -> Self {
        Self {
            entries: posting
                .entries
                .into_iter()
                .map(|entry| record::EntryRecord {
                    balance: entry.balance,
                    kind: entry.kind,
                    amount: entry.amount,
                    lot: LEGACY_LOT,
                })
                .collect(),
            accounts: posting.accounts,
            lots: Vec::new(),
        }
    }
}

impl From<DecisionV2> for Decision {
    fn from(decision: DecisionV2) -> Self {
        match decision {
            DecisionV2::Authorize(old) => Decision::Authorize(record::Authorized {
                id: old.id,
                tenant: old.tenant,
                fingerprint: old.fingerprint,
                policy: old.policy,
                operation: old.operation,
                request: old.request,
                answer: old.answer,
                expires_at_ms: old.expires_at_ms,
                posting: old.posting.into(),
                marks: old.marks,
            }),
            DecisionV2::Settle(old) => Decision::Settle(record::Settled {
                id: old.id,
                tenant: old.tenant,
                policy: old.policy,
                status: old.status,
                answer: old.answer,
                posting: old.posting.into(),
                marks: old.marks,
                outcome: None,
            }),
            DecisionV2::Expire(old) => Decision::Expire(record::Expired {
                id: old.id,
                tenant: old.tenant,
                policy: old.policy,
                posting: old.posting.into(),
            }),
            DecisionV2::Grant(old) => Decision::Grant(record::Granted {
                grant_id: old.grant_id,
                tenant: old.tenant,
                balance: old.balance,
                amount: old.amount,
                policy: old.policy,
                posting: old.posting.into(),
                terms: LotTerms::default(),
            }),
            DecisionV2::Policy(saved) => Decision::Policy(saved),
            DecisionV2::Activate(activation) => Decision::Activate(activation),
            DecisionV2::Import(imported) => Decision::Import(imported),
        }
    }
}

/// A snapshot's tail before lots.
#[derive(Deserialize)]
pub(super) struct SnapshotTailV2 {
    open_holds: Vec<TransactionV2>,
    ids: Option<GrowableBloom>,
    marks: Option<GrowableBloom>,
    policies: Vec<(Digest, PolicyMeta)>,
    active_policy: Option<Digest>,
    next_entry_id: u64,
    last_seq: u64,
}

#[derive(Deserialize)]
pub(super) struct TransactionV2 {
    id: String,
    tenant: String,
    state: record::TransactionState,
    fingerprint: Digest,
    policy: Digest,
    created_at_ms: u64,
    expires_at_ms: Option<u64>,
    operation: String,
    request: RequestRecord,
    authorization: AuthorizationRecord,
    receipt: Option<ReceiptRecord>,
    held: record::AmountList,
}

impl From<TransactionV2> for TransactionRecord {
    fn from(old: TransactionV2) -> Self {
        Self {
            id: old.id,
            tenant: old.tenant,
            state: old.state,
            fingerprint: old.fingerprint,
            policy: old.policy,
            created_at_ms: old.created_at_ms,
            expires_at_ms: old.expires_at_ms,
            operation: old.operation,
            request: old.request,
            authorization: old.authorization,
            receipt: old.receipt,
            held: old.held,
            // A hold taken before lots drew on the legacy lot.
            drawn: Vec::new(),
        }
    }
}

impl From<SnapshotTailV2> for SnapshotTail {
    fn from(tail: SnapshotTailV2) -> Self {
        Self {
            open_holds: tail.open_holds.into_iter().map(Into::into).collect(),
            ids: tail.ids,
            marks: tail.marks,
            policies: tail.policies,
            active_policy: tail.active_policy,
            next_entry_id: tail.next_entry_id,
            last_seq: tail.last_seq,
        }
    }
}

#[cfg(test)]
pub(super) mod written {
    //! Writers of the frozen types, for tests that need bytes as an older build wrote
    //! them.
    use serde::Serialize;

    use super::*;

    /// The variants before `Grant` only keep its index.
    #[derive(Serialize)]
    #[allow(dead_code)]
    pub enum Decision2 {
        Authorize(()),
        Settle(()),
        Expire(()),
        Grant(Granted2),
    }

    #[derive(Serialize)]
    pub struct Granted2 {
        pub grant_id: String,
        pub tenant: String,
        pub balance: String,
        pub amount: i64,
        pub policy: u32,
        pub posting: Posting2,
    }

    #[derive(Serialize)]
    pub struct Posting2 {
        pub entries: Vec<(String, EntryKind, i64)>,
        pub accounts: Vec<(String, AccountState)>,
    }
}
