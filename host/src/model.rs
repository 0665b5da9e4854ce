//! What callers send to the meter and what it answers. The answers serialize to the
//! JSON of the HTTP API as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Credits per balance name, e.g. `{"enhancement": 3}`.
pub type Amounts = BTreeMap<String, i64>;

/// One metered call, before the work is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeRequest {
    /// The idempotency key; generated (UUIDv7) when absent.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "demo-1")]
    pub transaction_id: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "acme")]
    pub tenant: String,
    /// The gateway's name for the call, e.g. `person.enrich`.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "person.enrich")]
    pub operation: String,
    /// Ordered batch items (1 to 512 bytes each, no NUL); the policy admits a prefix of
    /// them.
    #[serde(default)]
    #[schema(max_items = 10_000, example = json!(["jane@example.com"]))]
    pub items: Vec<String>,
    /// At most 64; names of 1 to 128 bytes, values of at most 1,024.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The raw request body (at most 1 MiB); base64 in JSON.
    #[serde(default, rename = "body_base64", with = "base64_body")]
    #[schema(value_type = Option<String>, content_encoding = "base64")]
    pub body: Option<Vec<u8>>,
}

/// How the gateway's work went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettleRequest {
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "demo-1")]
    pub transaction_id: String,
    /// The HTTP status of the upstream work.
    #[schema(minimum = 100, maximum = 599, example = 200)]
    pub status: u16,
    /// At most 64; names of 1 to 128 bytes, values of at most 1,024.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The raw response body (at most 1 MiB); base64 in JSON.
    #[serde(default, rename = "body_base64", with = "base64_body")]
    #[schema(value_type = Option<String>, content_encoding = "base64")]
    pub body: Option<Vec<u8>>,
}

/// A top-up of one balance: a lot of credits with its terms. Idempotent by `grant_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    pub grant_id: String,
    pub tenant: String,
    pub balance: String,
    pub amount: i64,
    #[serde(flatten)]
    pub terms: GrantTerms,
}

/// What a grant says of its lot besides the amount; every field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantTerms {
    /// When the grant takes effect, in ms since the Unix epoch: until then it adds
    /// nothing to the balance (it is listed as `scheduled`), and at that time the ledger
    /// grants its lot. None, or a time already past: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 1_796_083_200_000_i64)]
    pub effective_at_ms: Option<i64>,
    /// When the lot's unspent credits leave (`lot_expire`), in ms since the Unix epoch;
    /// later than now (and than `effective_at_ms`). None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 1_798_761_600_000_i64)]
    pub expires_at_ms: Option<i64>,
    /// Lots burn lowest priority first, then soonest expiry, then oldest grant.
    #[serde(default)]
    pub priority: i32,
    /// Free text of 1 to 64 bytes (`paid`, `promotional`, ...); `paid` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "promotional")]
    pub category: Option<String>,
    /// At most 16 pairs; keys of 1 to 64 bytes, values of at most 256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Which policy decided: name and version from `describe`, and the sha256 of its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// A stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// The answer to authorize. A policy's refusal is an answer too (`admitted: false`,
/// with the status the gateway should give its client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Authorization {
    pub transaction_id: String,
    pub admitted: bool,
    /// The status for the gateway's client: the refusal's, or the policy's choice for
    /// an admission (e.g. 202), or none.
    pub status: Option<u16>,
    pub error: Option<ErrorBody>,
    pub admitted_items: u32,
    pub held: Amounts,
    pub charged: Amounts,
    pub headers: BTreeMap<String, String>,
    pub meta: serde_json::Value,
    /// Credits available after this decision (open holds taken out).
    pub balances: Amounts,
    pub policy: PolicyRef,
    /// Set when the policy failed and the failure mode admitted the request anyway,
    /// unpriced: the failure (`docs/policy-budget.md`, "The failure mode").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_open: Option<ErrorBody>,
}

/// The answer to quote: what authorize would answer now, with nothing recorded, held or
/// marked. Serialized as the authorization's fields beside `"quote": true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Quote {
    /// Always true: says that this answer moved and reserved nothing.
    pub quote: bool,
    #[serde(flatten)]
    pub authorization: Authorization,
}

impl From<Authorization> for Quote {
    fn from(authorization: Authorization) -> Self {
        Self {
            quote: true,
            authorization,
        }
    }
}

/// The answer to settle: what was captured or charged, and what was released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    pub transaction_id: String,
    pub charged: Amounts,
    pub released: Amounts,
    /// Credits the policy asked for that the balance could not cover (never negative).
    pub uncollected: Amounts,
    pub headers: BTreeMap<String, String>,
    pub meta: serde_json::Value,
    pub balances: Amounts,
    pub policy: PolicyRef,
    /// Set when the transaction was admitted open: its settle charged nothing and did
    /// not run the policy. The failure the admission was made despite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_open: Option<ErrorBody>,
}

/// A tenant's credits: available now, and held by open transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantBalances {
    pub tenant: String,
    /// Credits available now, per balance; negative while an overdraft is used.
    pub balances: Amounts,
    pub held: Amounts,
    /// The overdraft limits an operator set (how far below zero spending may take each
    /// balance): only the balances that have one.
    #[serde(default, skip_serializing_if = "Amounts::is_empty")]
    pub overdraft_limits: Amounts,
    /// The spend caps an operator set, with the current window's spending: only the
    /// balances that have one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spend_caps: BTreeMap<String, SpendCapView>,
    /// What an operator watches, for events: only the watched balances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, ThresholdTerms>,
    /// Where the credits come from, lot by lot, in burn order per balance: only when
    /// asked for (`?lots=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lots: Option<Vec<LotView>>,
    /// Grants that take effect later, by time (and those voided or refused before they
    /// did): only when asked for (`?lots=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<Vec<ScheduledGrantView>>,
}

/// A spend cap as an operator sets it: at most `cap` credits held or charged per
/// window of the zone's calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendCapTerms {
    /// Credits per window, from 0 (refuses every spending admission) to 10^15.
    pub cap: i64,
    /// `hour`, `day` or `month`: windows start on the zone's hour, midnight, or
    /// midnight on the 1st.
    pub window: String,
    /// An IANA time zone (`Europe/Paris`); `UTC` when none is given.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A refill as an operator sets it: a lot granted at the start of every period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillRequest {
    /// A balance the active policy names.
    pub balance: String,
    /// Credits each period grants (rollover: at most), 1 to 10^15.
    pub amount: i64,
    /// `hour`, `day`, `month`, or `N hours`, `N days`, `N months` (N from 1 to 1,000).
    #[schema(example = "month")]
    pub every: String,
    /// An IANA time zone whose calendar the periods follow; `UTC` when absent.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// When the first period starts, in ms since the Unix epoch, up to the year 9999:
    /// now when absent (or, for a refill that exists, its anchor unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_ms: Option<i64>,
    /// `reset`: a period's unspent credits expire when the next starts; `rollover`:
    /// they stay, and a period grants no more than tops the refill's lots up to
    /// `rollover_cap`.
    #[schema(example = "reset")]
    pub mode: String,
    /// With `rollover` only: the most the refill's lots hold after a refill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover_cap: Option<i64>,
    /// The lots' burn priority (lower burns first).
    #[serde(default)]
    pub priority: i32,
    /// The lots' category; `refill` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// A refill and where its schedule stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefillView {
    pub refill_id: String,
    pub balance: String,
    pub amount: i64,
    pub every: String,
    pub time_zone: String,
    pub anchor_ms: i64,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover_cap: Option<i64>,
    pub priority: i32,
    pub category: String,
    /// When the last period granted started (its lot's grant id is
    /// `refill:{refill_id}:{last_start_ms}`); none before the first.
    pub last_start_ms: Option<i64>,
    /// When the next period starts, and its lot is granted.
    pub next_start_ms: Option<i64>,
}

/// What an operator watches on a balance. Once set (even with no level), the balance
/// raises events: `balance_low` as `available` falls below a level, `balance_exhausted`
/// as it reaches zero, `lot_expiring` a lead time before a lot expires, `lot_expired`,
/// `lot_voided`, `refill_granted` and `spend_cap_reached`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdTerms {
    /// At most 16 levels, each `{"credits": N}` or `{"percent": P}` (1 to 100, of the
    /// balance's latest grant: a refill's lot is a grant).
    #[serde(default)]
    pub levels: Vec<LevelTerms>,
    /// Raise `lot_expiring` this long before a lot with credits left expires (0 to a
    /// year); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot_expiring_lead_ms: Option<i64>,
}

/// A balance level: in credits, or in percent of the balance's latest grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LevelTerms {
    /// Available credits (negative under an overdraft limit).
    Credits(i64),
    /// 1 to 100.
    Percent(u8),
}

/// One event of a watched balance, in the ledger's order of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// The event's place in the ledger's order: ask for `after` the last one seen. A
    /// receiver deduplicates deliveries by it.
    pub id: u64,
    /// When the batch that raised it was decided.
    pub at_ms: u64,
    pub tenant: String,
    pub balance: String,
    #[serde(flatten)]
    pub event: EventDetails,
}

/// What happened, by kind (`kind`), with its figures (`details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "details", rename_all = "snake_case")]
pub enum EventDetails {
    /// `available` fell from at or above a level to below it.
    BalanceLow {
        level: LevelTerms,
        level_credits: i64,
        before: i64,
        after: i64,
    },
    /// `available` fell from above zero to zero or below.
    BalanceExhausted { before: i64, after: i64 },
    /// A lot with credits left expires within the lead time.
    LotExpiring {
        lot: u64,
        grant_id: String,
        remaining: i64,
        expires_at_ms: i64,
    },
    /// A lot expired; `amount` credits left with it.
    LotExpired {
        lot: u64,
        grant_id: String,
        amount: i64,
    },
    /// A grant was voided; `amount` credits left with its lot.
    LotVoided {
        lot: u64,
        grant_id: String,
        amount: i64,
    },
    /// A refill granted a period's lot.
    RefillGranted {
        refill_id: String,
        grant_id: String,
        amount: i64,
        period_start_ms: i64,
    },
    /// The host refused an admission by the balance's spend cap, for the first time in
    /// the window.
    SpendCapReached {
        cap: i64,
        spent: i64,
        asked: i64,
        window_start_ms: i64,
        resets_at_ms: i64,
    },
}

impl EventDetails {
    /// The event's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            EventDetails::BalanceLow { .. } => "balance_low",
            EventDetails::BalanceExhausted { .. } => "balance_exhausted",
            EventDetails::LotExpiring { .. } => "lot_expiring",
            EventDetails::LotExpired { .. } => "lot_expired",
            EventDetails::LotVoided { .. } => "lot_voided",
            EventDetails::RefillGranted { .. } => "refill_granted",
            EventDetails::SpendCapReached { .. } => "spend_cap_reached",
        }
    }
}

/// A page of the event feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// The cursor for the next page: the last event's id, or the `after` asked for
    /// when no event came.
    pub next_after: u64,
}

/// A webhook as an operator sets it: every event of the feed that matches is POSTed to
/// `url`, in order, signed with `secret`, retried until delivered or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// `http://` or `https://`, at most 2,048 bytes.
    pub url: String,
    /// The HMAC-SHA256 key of the `creditgate-signature` header: 16 to 256 bytes.
    pub secret: String,
    /// Only this tenant's events; every tenant's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only these kinds (`balance_low`, ...); every kind when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Start after this event id (0: the whole feed). When absent, a new webhook gets
    /// the events raised from now on, and a changed one keeps its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Attempts at one event before it is dead-lettered: 1 to 100, 30 when absent
    /// (about 4 hours of retries with the default backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_max: Option<u32>,
}

/// A webhook and where its delivery is (its secret is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub webhook_id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    pub attempts_max: u32,
    /// Every event up to this id was delivered, skipped (another tenant or kind) or
    /// dead-lettered.
    pub after: u64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    /// When the next attempt is due, after a failure (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Events given up on, kept for `GET /v1/webhooks/{webhook_id}/dead`.
    pub dead_letters: u64,
}

/// An event a webhook gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub event: EventView,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at_ms: u64,
    /// An operator asked for it again: the next delivery round tries it once more.
    pub requeued: bool,
}

/// A spend cap and its current window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpendCapView {
    pub cap: i64,
    pub window: String,
    pub time_zone: String,
    /// Credits held or charged in the current window.
    pub spent: i64,
    /// When the current window ends and its spending starts again from zero.
    pub resets_at_ms: i64,
}

/// One lot: the credits of one grant, and what is left of them. Credits granted
/// before lots existed are not listed: they are the balance beyond its lots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LotView {
    /// The ledger's number for the lot (journal entries name it).
    pub lot: u64,
    pub grant_id: String,
    pub balance: String,
    /// Credits granted.
    pub amount: i64,
    /// Credits left to spend: 0 once spent, expired or voided.
    pub remaining: i64,
    /// `open`, `expired` or `voided`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    pub priority: i32,
    pub category: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub granted_at_ms: u64,
}

/// A grant that takes effect later, as `?lots=true` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduledGrantView {
    pub grant_id: String,
    pub balance: String,
    pub amount: i64,
    pub effective_at_ms: i64,
    /// `pending` (waiting for its time), `voided` (by an operator before it took
    /// effect) or `refused` (its time came but its balance was no longer the policy's,
    /// or would have passed the largest amount): only a pending grant is ever granted.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    pub priority: i32,
    pub category: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// One entry of the policy history: which policy became active, when, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyActivation {
    pub id: i64,
    pub digest: String,
    pub name: String,
    pub version: String,
    /// How it was activated: `start`, `http`, `watch`, `rollback`, `library`...
    pub via: String,
    pub activated_at_ms: u64,
}

/// The active policy, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActivePolicy {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub balances: Vec<String>,
    pub hold_ttl_ms: u64,
    /// The contract version the module was built against (`creditgate:policy@VERSION`),
    /// e.g. `0.2.0`.
    pub contract: String,
    /// On PostgreSQL, every replica sharing the ledger that was seen in the last 5 s,
    /// with the digest it runs (an activation through any replica reaches the others
    /// within a second); absent on SQLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaView>>,
}

/// One replica sharing a PostgreSQL ledger, from its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaView {
    /// Its name: `serve --replica-name`, by default `PID@HOST`.
    pub replica: String,
    /// The digest of the policy it runs.
    pub digest: String,
    /// The ledger's latest activation, when this replica cannot load it (it keeps
    /// serving `digest`, the last good one).
    pub behind: Option<String>,
    /// Why it cannot load `behind`.
    pub error: Option<String>,
    /// Its last heartbeat, in ms since the Unix epoch (one a second).
    pub seen_at_ms: i64,
}

/// What a shadow candidate would have done differently from the active policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShadowReport {
    pub shadow: PolicyRef,
    pub since_ms: u64,
    pub authorizes_compared: u64,
    pub settles_compared: u64,
    pub authorize_differences: u64,
    pub settle_differences: u64,
    /// Differences by kind: `admit_vs_reject`, `admitted_items`, `charges`, `shadow_failed`.
    pub by_kind: BTreeMap<String, u64>,
    /// Credits the shadow would have held or charged at authorize, minus the active's.
    pub authorize_charge_delta: Amounts,
    /// Credits the shadow would have charged at settle, minus the active's.
    pub settle_charge_delta: Amounts,
    pub by_tenant: BTreeMap<String, TenantDifferences>,
    /// Tenants with differences beyond the itemized limit.
    pub tenants_not_itemized: u64,
    pub examples: Vec<ShadowExample>,
    /// Candidate calls that went over budget or ran slower than half the wall bound.
    pub over_budget: u64,
    /// Why the candidate is no longer run, once it has stopped.
    pub stopped: Option<String>,
    /// On PostgreSQL, the replicas whose traffic these figures count: the one answering
    /// first, then those that ran the same shadow setting and beat in the last seconds
    /// (each one's figures as of its last heartbeat, at most a second old). Empty on
    /// SQLite (one process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantDifferences {
    pub authorize: u64,
    pub settle: u64,
    /// Shadow minus active, authorize and settle together.
    pub charge_delta: Amounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShadowExample {
    pub transaction_id: String,
    pub tenant: String,
    pub operation: String,
    /// `authorize` or `settle`.
    pub step: String,
    pub active: String,
    pub shadow: String,
}

/// One line of the append-only journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JournalEntry {
    pub id: i64,
    /// The transaction (or, for a grant, the grant id) that moved the credits.
    pub transaction_id: String,
    pub tenant: String,
    pub balance: String,
    /// grant, hold, capture, release, charge, expire, or open (an admission made open
    /// by the failure mode, on the tenant's exposure account `exposure@START_MS`).
    pub kind: String,
    /// Always > 0; the kind says which way it moved.
    pub amount: i64,
    /// The lot the credits came from or went to: the number of its grant (see
    /// `?lots=true` on the balances). None for credits granted before lots existed
    /// and for `open` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot: Option<u64>,
    pub policy_digest: String,
    pub at_ms: u64,
}

/// A transaction as the audit sees it: its state, its answers and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    pub transaction_id: String,
    pub tenant: String,
    /// rejected, open, settled or expired.
    pub state: String,
    pub operation: String,
    pub policy_digest: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub held: Amounts,
    pub authorization: Authorization,
    pub receipt: Option<Receipt>,
    pub entries: Vec<JournalEntry>,
}

/// Bodies travel as base64 text in JSON.
mod base64_body {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        body: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match body {
            Some(bytes) => serializer.serialize_some(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                STANDARD.decode(text.as_bytes()).map_err(|error| {
                    serde::de::Error::custom(format!("body_base64 is not base64: {error}"))
                })
            })
            .transpose()
    }
}

/// How the meter's decisions were grouped into commits since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchStats {
    /// Store transactions committed (each one write of the log, synced before answers).
    pub batches: u64,
    /// Jobs (authorize, settle, grant, sweep, activation...) in those batches.
    pub decisions: u64,
    /// The most jobs one batch held: never above `batch_size_max`.
    pub largest_batch: u64,
}
