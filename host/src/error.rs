//! The errors a caller of the meter can see. Each has an HTTP status, a stable code and
//! a sentence; none of them leaves credits half-moved.

use thiserror::Error;

/// Why a meter call failed. Codes are stable: clients may match on them.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeterError {
    /// The request is malformed or breaks a documented limit.
    #[error("{0}")]
    InvalidRequest(String),
    /// A grant names a balance the active policy does not use.
    #[error("balance '{balance}' is not one of this policy's balances ({known})")]
    UnknownBalance { balance: String, known: String },
    /// An amount is zero, negative or out of range.
    #[error("{0}")]
    InvalidAmount(String),
    /// No transaction with this id was ever authorized.
    #[error("no transaction '{0}' was authorized")]
    UnknownTransaction(String),
    /// A transaction id was reused for a different request.
    #[error(
        "transaction '{0}' was already authorized with a different request; use a new transaction id"
    )]
    TransactionConflict(String),
    /// A grant id was reused for a different grant.
    #[error("grant '{0}' was already applied with a different tenant, balance or amount")]
    GrantConflict(String),
    /// Settle was called for a transaction whose authorize was rejected.
    #[error("transaction '{0}' was rejected at authorize and cannot be settled")]
    TransactionRejected(String),
    /// The transaction's hold expired before settle; its credits were released.
    #[error("the hold of transaction '{0}' expired before settle and was released")]
    HoldExpired(String),
    /// A policy module was refused: not a component, another contract version, a
    /// `describe` that fails, or failed contract checks. The active policy stays.
    #[error("the policy module was refused: {0}")]
    InvalidPolicy(String),
    /// There is no earlier policy to roll back to.
    #[error("no earlier policy to roll back to")]
    NoPreviousPolicy,
    /// No shadow policy is being evaluated.
    #[error("no shadow policy is being evaluated; load one with PUT /v1/policy?mode=shadow")]
    NoShadow,
    /// The policy trapped; the request fails closed and nothing was written.
    #[error("the policy failed: {0}")]
    PolicyTrap(String),
    /// The policy used up its CPU budget for one call.
    #[error("the policy exceeded its CPU budget of {fuel} fuel units for one call")]
    PolicyFuelExhausted { fuel: u64 },
    /// The policy call ran past its wall-clock bound.
    #[error("the policy exceeded its time budget of {ms} ms for one call")]
    PolicyTimeExceeded { ms: u64 },
    /// The policy asked the host for more than one call may: too many `marked` lookups
    /// or keys, or too many bytes passed between policy and host.
    #[error("the policy exceeded a host-call limit: {0}")]
    PolicyHostLimit(String),
    /// The tenant's policy calls keep failing or exceeding their budget: they are refused
    /// for a while without running, so other tenants are not stalled.
    #[error(
        "this tenant's policy calls keep failing or exceeding their budget; they are refused for {retry_after_ms} ms"
    )]
    PolicyBudgetExceeded { retry_after_ms: u64 },
    /// The policy answered something the contract forbids.
    #[error("the policy broke the contract: {0}")]
    PolicyInvalidVerdict(String),
    /// The ledger store failed; nothing of this request was acknowledged.
    #[error("the ledger store is unavailable: {0}")]
    StoreUnavailable(String),
    /// The ledger's schema or a record is newer than this build knows: nothing is read
    /// or written.
    #[error("the ledger cannot be used by this build: {0}")]
    StoreIncompatible(String),
    /// A stored record failed its checks (checksum, length, content): nothing more is
    /// decided on it.
    #[error("the ledger is damaged: {0}")]
    StoreCorrupt(String),
    /// Another meter owns this SQLite ledger.
    #[error("the ledger is in use: {0}")]
    LedgerInUse(String),
    /// The meter's sequencer stopped; nothing is decided until creditgate restarts.
    #[error("the meter stopped deciding: {0}")]
    SequencerStopped(String),
    /// Too many requests are queued for the ledger.
    #[error("the meter is overloaded; retry shortly")]
    Overloaded,
    /// The meter is shutting down.
    #[error("the meter is shut down")]
    ShutDown,
}

impl MeterError {
    /// Whether the policy caused it (it failed, broke the contract or passed a bound of
    /// its call, or its tenant's breaker is open), rather than the request or the meter.
    pub fn caused_by_policy(&self) -> bool {
        matches!(
            self,
            MeterError::PolicyTrap(_)
                | MeterError::PolicyFuelExhausted { .. }
                | MeterError::PolicyTimeExceeded { .. }
                | MeterError::PolicyHostLimit(_)
                | MeterError::PolicyInvalidVerdict(_)
                | MeterError::PolicyBudgetExceeded { .. }
        )
    }

    /// Whether a policy call passed one of its bounds (fuel, wall time, host limits).
    pub fn over_budget(&self) -> bool {
        matches!(
            self,
            MeterError::PolicyFuelExhausted { .. }
                | MeterError::PolicyTimeExceeded { .. }
                | MeterError::PolicyHostLimit(_)
        )
    }

    /// How long a client should wait before trying again, when that is known.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            MeterError::PolicyBudgetExceeded { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The HTTP status a sidecar answers with.
    pub fn status(&self) -> u16 {
        match self {
            MeterError::InvalidRequest(_)
            | MeterError::UnknownBalance { .. }
            | MeterError::InvalidAmount(_) => 400,
            MeterError::UnknownTransaction(_) => 404,
            MeterError::InvalidPolicy(_) => 422,
            MeterError::NoPreviousPolicy => 409,
            MeterError::NoShadow => 404,
            MeterError::TransactionConflict(_)
            | MeterError::GrantConflict(_)
            | MeterError::TransactionRejected(_)
            | MeterError::HoldExpired(_) => 409,
            MeterError::PolicyTrap(_)
            | MeterError::PolicyFuelExhausted { .. }
            | MeterError::PolicyTimeExceeded { .. }
            | MeterError::PolicyHostLimit(_)
            | MeterError::PolicyInvalidVerdict(_) => 500,
            MeterError::PolicyBudgetExceeded { .. } => 503,
            MeterError::StoreUnavailable(_)
            | MeterError::StoreIncompatible(_)
            | MeterError::StoreCorrupt(_)
            | MeterError::LedgerInUse(_)
            | MeterError::SequencerStopped(_)
            | MeterError::Overloaded
            | MeterError::ShutDown => 503,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            MeterError::InvalidRequest(_) => "invalid_request",
            MeterError::UnknownBalance { .. } => "unknown_balance",
            MeterError::InvalidAmount(_) => "invalid_amount",
            MeterError::UnknownTransaction(_) => "unknown_transaction",
            MeterError::InvalidPolicy(_) => "invalid_policy",
            MeterError::NoPreviousPolicy => "no_previous_policy",
            MeterError::NoShadow => "no_shadow",
            MeterError::TransactionConflict(_) => "transaction_conflict",
            MeterError::GrantConflict(_) => "grant_conflict",
            MeterError::TransactionRejected(_) => "transaction_rejected",
            MeterError::HoldExpired(_) => "hold_expired",
            MeterError::PolicyTrap(_) => "policy_trap",
            MeterError::PolicyFuelExhausted { .. } => "policy_fuel_exhausted",
            MeterError::PolicyTimeExceeded { .. } => "policy_time_exceeded",
            MeterError::PolicyHostLimit(_) => "policy_host_limit",
            MeterError::PolicyBudgetExceeded { .. } => "policy_budget_exceeded",
            MeterError::PolicyInvalidVerdict(_) => "policy_invalid_verdict",
            MeterError::StoreUnavailable(_) => "store_unavailable",
            MeterError::StoreIncompatible(_) => "store_incompatible",
            MeterError::StoreCorrupt(_) => "store_corrupt",
            MeterError::LedgerInUse(_) => "ledger_in_use",
            MeterError::SequencerStopped(_) => "sequencer_stopped",
            MeterError::Overloaded => "overloaded",
            MeterError::ShutDown => "shut_down",
        }
    }
}

impl From<rusqlite::Error> for MeterError {
    fn from(error: rusqlite::Error) -> Self {
        MeterError::StoreUnavailable(error.to_string())
    }
}

impl From<postgres::Error> for MeterError {
    fn from(error: postgres::Error) -> Self {
        let detail = match (error.as_db_error(), std::error::Error::source(&error)) {
            (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
            (None, Some(source)) => format!("{error}: {source}"),
            (None, None) => error.to_string(),
        };
        MeterError::StoreUnavailable(format!("PostgreSQL: {detail}"))
    }
}
