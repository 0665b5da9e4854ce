//! The errors a caller of the meter can see. Each has an HTTP status, a stable code and
//! a sentence; none of them leaves credits half-moved.

use serde::Serialize;
use thiserror::Error;
use utoipa::ToSchema;

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
    #[error("grant '{0}' was already applied with a different tenant, balance, amount or terms")]
    GrantConflict(String),
    /// No grant with this id was made to this tenant.
    #[error("no grant '{0}' was made to this tenant")]
    UnknownGrant(String),
    /// No webhook with this id (or no dead letter of it with this event id).
    #[error("{0}")]
    UnknownWebhook(String),
    /// The grant was made before lots existed: its credits are not told apart from the
    /// account's other credits of that time, so it cannot be voided alone.
    #[error("grant '{0}' was made before lots existed and cannot be voided alone")]
    GrantNotVoidable(String),
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
    /// The module's bytes are not the ones pinned by the caller (`--sha256`,
    /// `If-Match`): nothing was compiled or activated.
    #[error("the module's sha256 is {actual}, not the pinned {expected}")]
    DigestMismatch { expected: String, actual: String },
    /// The meter trusts signing keys and the module came without a signature: nothing
    /// was compiled or activated.
    #[error(
        "this meter activates only modules signed by a trusted key; the module (sha256 {0}) came without a signature"
    )]
    SignatureRequired(String),
    /// The module's signature does not read as one, is not of these bytes, or is by a
    /// key the meter does not trust: nothing was compiled or activated.
    #[error("the module's signature (sha256 {digest}) was refused: {why}")]
    SignatureInvalid { digest: String, why: String },
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
            MeterError::UnknownTransaction(_)
            | MeterError::UnknownGrant(_)
            | MeterError::UnknownWebhook(_) => 404,
            MeterError::InvalidPolicy(_) => 422,
            MeterError::DigestMismatch { .. } => 412,
            MeterError::SignatureRequired(_) | MeterError::SignatureInvalid { .. } => 403,
            MeterError::NoPreviousPolicy => 409,
            MeterError::NoShadow => 404,
            MeterError::TransactionConflict(_)
            | MeterError::GrantConflict(_)
            | MeterError::GrantNotVoidable(_)
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
        self.error_code().as_str()
    }

    /// The stable code, as the API's error answers carry it.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            MeterError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            MeterError::UnknownBalance { .. } => ErrorCode::UnknownBalance,
            MeterError::InvalidAmount(_) => ErrorCode::InvalidAmount,
            MeterError::UnknownTransaction(_) => ErrorCode::UnknownTransaction,
            MeterError::InvalidPolicy(_) => ErrorCode::InvalidPolicy,
            MeterError::DigestMismatch { .. } => ErrorCode::DigestMismatch,
            MeterError::SignatureRequired(_) => ErrorCode::SignatureRequired,
            MeterError::SignatureInvalid { .. } => ErrorCode::SignatureInvalid,
            MeterError::NoPreviousPolicy => ErrorCode::NoPreviousPolicy,
            MeterError::NoShadow => ErrorCode::NoShadow,
            MeterError::TransactionConflict(_) => ErrorCode::TransactionConflict,
            MeterError::GrantConflict(_) => ErrorCode::GrantConflict,
            MeterError::UnknownGrant(_) => ErrorCode::UnknownGrant,
            MeterError::UnknownWebhook(_) => ErrorCode::UnknownWebhook,
            MeterError::GrantNotVoidable(_) => ErrorCode::GrantNotVoidable,
            MeterError::TransactionRejected(_) => ErrorCode::TransactionRejected,
            MeterError::HoldExpired(_) => ErrorCode::HoldExpired,
            MeterError::PolicyTrap(_) => ErrorCode::PolicyTrap,
            MeterError::PolicyFuelExhausted { .. } => ErrorCode::PolicyFuelExhausted,
            MeterError::PolicyTimeExceeded { .. } => ErrorCode::PolicyTimeExceeded,
            MeterError::PolicyHostLimit(_) => ErrorCode::PolicyHostLimit,
            MeterError::PolicyBudgetExceeded { .. } => ErrorCode::PolicyBudgetExceeded,
            MeterError::PolicyInvalidVerdict(_) => ErrorCode::PolicyInvalidVerdict,
            MeterError::StoreUnavailable(_) => ErrorCode::StoreUnavailable,
            MeterError::StoreIncompatible(_) => ErrorCode::StoreIncompatible,
            MeterError::StoreCorrupt(_) => ErrorCode::StoreCorrupt,
            MeterError::LedgerInUse(_) => ErrorCode::LedgerInUse,
            MeterError::SequencerStopped(_) => ErrorCode::SequencerStopped,
            MeterError::Overloaded => ErrorCode::Overloaded,
            MeterError::ShutDown => ErrorCode::ShutDown,
        }
    }
}

/// Declares [`ErrorCode`] from one list of variants and their codes, so that the code
/// a variant is written as in JSON and the one [`ErrorCode::as_str`] gives (metrics
/// labels, logs) are the same string.
macro_rules! error_codes {
    // `tt`, not `literal`: utoipa reads the renames only from plain tokens.
    ($($variant:ident = $code:tt,)*) => {
        /// Every stable code an error answer of the sidecar can carry: the meter's
        /// ([`MeterError::error_code`]) and the HTTP API's own. The API document lists
        /// them as the enum of `error.code`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
        pub enum ErrorCode {
            $(#[serde(rename = $code)] $variant,)*
        }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    InvalidRequest = "invalid_request",
    UnknownBalance = "unknown_balance",
    InvalidAmount = "invalid_amount",
    UnknownTransaction = "unknown_transaction",
    InvalidPolicy = "invalid_policy",
    DigestMismatch = "digest_mismatch",
    SignatureRequired = "signature_required",
    SignatureInvalid = "signature_invalid",
    NoPreviousPolicy = "no_previous_policy",
    NoShadow = "no_shadow",
    TransactionConflict = "transaction_conflict",
    GrantConflict = "grant_conflict",
    UnknownGrant = "unknown_grant",
    UnknownWebhook = "unknown_webhook",
    GrantNotVoidable = "grant_not_voidable",
    TransactionRejected = "transaction_rejected",
    HoldExpired = "hold_expired",
    PolicyTrap = "policy_trap",
    PolicyFuelExhausted = "policy_fuel_exhausted",
    PolicyTimeExceeded = "policy_time_exceeded",
    PolicyHostLimit = "policy_host_limit",
    PolicyBudgetExceeded = "policy_budget_exceeded",
    PolicyInvalidVerdict = "policy_invalid_verdict",
    StoreUnavailable = "store_unavailable",
    StoreIncompatible = "store_incompatible",
    StoreCorrupt = "store_corrupt",
    LedgerInUse = "ledger_in_use",
    SequencerStopped = "sequencer_stopped",
    Overloaded = "overloaded",
    ShutDown = "shut_down",
    // The HTTP API's own.
    InvalidJson = "invalid_json",
    Unauthorized = "unauthorized",
    NotFound = "not_found",
    MethodNotAllowed = "method_not_allowed",
    RequestTimeout = "request_timeout",
    PayloadTooLarge = "payload_too_large",
    MetricsUnavailable = "metrics_unavailable",
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
