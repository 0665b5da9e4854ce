//! The stored record of one metered transaction, from authorize to settle.

use crate::model::{Amounts, Authorization, AuthorizeRequest, Receipt};

/// Where a transaction is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    /// The policy refused it; the answer is kept for idempotent retries.
    Rejected,
    /// Admitted; waiting for settle (its hold, if any, is open).
    Open,
    /// Settled; the receipt is kept for idempotent retries.
    Settled,
    /// Its hold passed its TTL unsettled and was released.
    Expired,
}

impl TransactionState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionState::Rejected => "rejected",
            TransactionState::Open => "open",
            TransactionState::Settled => "settled",
            TransactionState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            TransactionState::Rejected,
            TransactionState::Open,
            TransactionState::Settled,
            TransactionState::Expired,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// Everything settle, retries and audits need to know about a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionRecord {
    pub id: String,
    pub tenant: String,
    pub state: TransactionState,
    /// sha256 of the canonical request: a retry must match it.
    pub fingerprint: String,
    /// The policy that authorized; settle runs on the same one.
    pub policy_digest: String,
    pub request: AuthorizeRequest,
    pub authorization: Authorization,
    /// Credits still held, per balance (empty once settled or expired).
    pub held: Amounts,
    pub created_at_ms: u64,
    /// When the hold lapses; none when nothing is held.
    pub expires_at_ms: Option<u64>,
    pub receipt: Option<Receipt>,
}
