//! The JSON answers only the HTTP API gives: the meter's results gathered into one object
//! per call, `/healthz`'s report, and the error body. The meter's own answers
//! ([`creditgate::model`]) are sent as they are. Each is a type so that the API document
//! (`GET /openapi.json`) describes what the handlers send.

use serde::Serialize;
use utoipa::ToSchema;

use creditgate::error::ErrorCode;
use creditgate::meter::failure::FailureStats;
use creditgate::model::{ActivePolicy, BatchStats, JournalEntry, PolicyActivation, PolicyRef};
use creditgate::store::ViewsLag;

/// Every error answer: `{"error": {"code", "message"}}`, with a 4xx or 5xx status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorAnswer {
    pub error: ErrorDetail,
}

/// A stable code, which clients may match on, and a sentence for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// `GET /v1/tenants/{tenant}/journal`: the tenant's oldest entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct Journal {
    pub tenant: String,
    pub entries: Vec<JournalEntry>,
}

/// `GET /v1/audit`: every account whose state differs from the sum of its journal;
/// empty when the ledger is sound.
#[derive(Debug, Serialize, ToSchema)]
pub struct Audit {
    pub violations: Vec<String>,
}

/// `GET /v1/policy`: the active policy, the activation history (newest first, at most
/// 100), and the digests of the versions loaded now.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyState {
    pub active: ActivePolicy,
    pub history: Vec<PolicyActivation>,
    pub loaded: Vec<String>,
}

/// The active policy after a change of policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct Activated {
    pub active: ActivePolicy,
    /// After `PUT /v1/policy?mode=shadow` only: the candidate now evaluated beside the
    /// active policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<PolicyRef>,
}

/// `GET /healthz`: whether the meter decides, and how it has been doing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// Why the meter stopped deciding, once it has.
    pub reason: Option<String>,
    /// `sequencer_stopped` once the meter stopped deciding.
    pub code: Option<ErrorCode>,
    pub policy: PolicyRef,
    /// Group commit so far.
    pub batches: BatchStats,
    /// How far the SQLite views trail the log; none on PostgreSQL.
    pub views: Option<ViewsLag>,
    /// What the failure mode did with requests whose policy failed.
    pub policy_failures: FailureStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The meter decides (200).
    Ok,
    /// The meter stopped deciding until a restart (503).
    Failing,
}
