//! The record of the ledger: what one batch of decisions decided, in the ledger's own
//! types. The sequencer builds one [`Batch`] per batch; the SQLite store appends it to
//! its log, the PostgreSQL store applies it to its tables, and replay rebuilds the live
//! state from it. These types are stored: change them only by adding a new format
//! version in [`super::codec`] with a decoder for the old one.
//!
//! Accounts are recorded as absolute states after each decision, never as deltas, so
//! that replaying any suffix of the log that starts at or before a snapshot gives the
//! same state (see `docs/ledger.md`).

use serde::{Deserialize, Serialize};

use super::caps::{CapTerms, CapWindow};
use super::events::{EventKind, Watch};
use super::lots::{Closure, Lot, LotId};
use super::refills::RefillTerms;
use super::scheduled::ScheduledGrant;
use super::{AccountState, EntryKind};
use crate::model::{Amounts, Authorization, ErrorBody, PolicyRef, Receipt, SettleRequest};

/// A sha256 digest: of a policy's component bytes, or of a request's canonical form.
pub type Digest = [u8; 32];

/// Credits per balance, in balance-name order.
pub type AmountList = Vec<(String, i64)>;

/// One batch: every decision the sequencer made between two commits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The log's sequence number (SQLite). On PostgreSQL, where the log's insert draws
    /// it after the record is encoded, what the record holds means nothing: the log's
    /// reader sets it.
    pub seq: u64,
    /// The clock reading every decision of the batch was made at.
    pub at_ms: u64,
    /// The id of the batch's first journal entry; the others follow in order.
    pub first_entry_id: u64,
    /// The policies the decisions name, by index (a byte in each decision, not a digest).
    pub policies: Vec<Digest>,
    pub decisions: Vec<Decision>,
}

/// One decision of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Authorize(Authorized),
    Settle(Settled),
    Expire(Expired),
    Grant(Granted),
    /// A policy the ledger had not seen: its description and bytes, so that a settle
    /// after a restart can run on it.
    Policy(PolicyRecord),
    /// A policy became the active one.
    Activate(Activation),
    /// Rows of a ledger written before the log (schema v4), carried over at migration.
    Import(Imported),
    /// A lot expired or was voided: its remainder left. Added in record format 3.
    CloseLot(LotClosed),
    /// An operator set an account's overdraft limit. Added in record format 4.
    Overdraft(OverdraftSet),
    /// An operator set or removed an account's spend cap. Added in record format 5.
    Cap(CapSet),
    /// The spend windows the decision before it moved. Added in record format 5.
    Spend(Spent),
    /// An operator set or removed a refill, or the sweep granted one of its periods.
    /// Added in record format 5.
    Refill(RefillSet),
    /// An operator set or removed what an account is watched for. Added in record
    /// format 6.
    Watch(WatchSet),
    /// Something happened to a watched account, caused by the decisions of the same
    /// batch. Added in record format 6.
    Event(EventRecord),
    /// A grant that takes effect later, as it is after the decision: scheduled, granted
    /// by the sweep (the batch records its grant too), voided or refused. Added in
    /// record format 7.
    Schedule(ScheduledGrant),
}

/// An authorize: admitted (the transaction is open) or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorized {
    pub id: String,
    pub tenant: String,
    /// What makes a retry the same request.
    pub fingerprint: Digest,
    /// Index into [`Batch::policies`].
    pub policy: u32,
    pub operation: String,
    /// What settle will give the policy back, and what a replay under another policy
    /// asks it (`creditgate replay`). Since record format 8 a refusal records it too;
    /// before, none for a refusal, which never settles.
    pub request: Option<RequestRecord>,
    pub answer: AuthorizationRecord,
    /// When the hold lapses; none when nothing is held (or refused).
    pub expires_at_ms: Option<u64>,
    pub posting: PostingRecord,
    pub marks: Vec<MarkRecord>,
}

/// The parts of a request settle hands back to the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub items: Vec<String>,
    pub attributes: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
}

/// The answer to an authorize, as a retry gets it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRecord {
    pub admitted: bool,
    pub status: Option<u16>,
    /// `(code, message)` of a refusal; on an admission, the failure of the policy it
    /// was admitted open despite ([`Self::failed_open`]).
    pub error: Option<(String, String)>,
    pub admitted_items: u32,
    pub held: AmountList,
    pub charged: AmountList,
    pub headers: Vec<(String, String)>,
    pub meta_json: String,
    /// Credits available after the decision, per described balance.
    pub balances: AmountList,
}

/// A settle: what it charged and released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub id: String,
    pub tenant: String,
    pub policy: u32,
    /// The outcome's status, for the audit.
    pub status: u16,
    pub answer: ReceiptRecord,
    pub posting: PostingRecord,
    pub marks: Vec<MarkRecord>,
    /// The outcome's attributes and body, as the policy was given them: what a replay
    /// of the ledger under another policy settles on (`creditgate replay`). Added in
    /// record format 8; none in a settle recorded before.
    pub outcome: Option<OutcomeRecord>,
}

/// The parts of a settle's outcome besides its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub attributes: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
}

impl OutcomeRecord {
    pub fn of(request: &SettleRequest) -> Self {
        Self {
            attributes: pairs(&request.attributes),
            body: request.body.clone(),
        }
    }
}

/// The answer to a settle, as a retry gets it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub charged: AmountList,
    pub released: AmountList,
    pub uncollected: AmountList,
    pub headers: Vec<(String, String)>,
    pub meta_json: String,
    pub balances: AmountList,
}

/// A hold released because it outlived its TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    pub id: String,
    pub tenant: String,
    pub policy: u32,
    pub posting: PostingRecord,
}

/// A top-up, idempotent by `grant_id`: a new lot, numbered by its grant entry's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub grant_id: String,
    pub tenant: String,
    pub balance: String,
    pub amount: i64,
    /// The active policy, whose digest the journal entry names.
    pub policy: u32,
    pub posting: PostingRecord,
    /// Added in record format 3 (a grant of an older record has the defaults).
    pub terms: LotTerms,
}

impl Granted {
    /// The grant's lot: the one its posting records (the legacy lot for a grant made
    /// before lots, whose posting records none).
    pub fn lot(&self) -> LotId {
        self.posting
            .lots
            .first()
            .map_or(super::lots::LEGACY_LOT, |(_, lot)| lot.id)
    }
}

/// What a grant says of its lot besides its amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotTerms {
    /// When the lot's remainder leaves; none: never.
    pub expires_at_ms: Option<i64>,
    /// Lower burns first.
    pub priority: i32,
    /// Free text: `paid`, `promotional`, ...
    pub category: String,
    pub metadata: Vec<(String, String)>,
}

/// The category of a grant that names none.
pub const DEFAULT_CATEGORY: &str = "paid";

impl Default for LotTerms {
    fn default() -> Self {
        Self {
            expires_at_ms: None,
            priority: 0,
            category: DEFAULT_CATEGORY.to_owned(),
            metadata: Vec::new(),
        }
    }
}

/// A lot closed by its expiry or a void: its remainder leaves through one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotClosed {
    pub tenant: String,
    pub balance: String,
    pub lot: LotId,
    /// The lot's grant: the journal's transaction id for the closing entry.
    pub grant_id: String,
    pub closure: Closure,
    /// The active policy, whose digest the journal entry names.
    pub policy: u32,
    pub posting: PostingRecord,
}

/// An account's overdraft limit, as an operator set it: how far below zero spending
/// may take its `available` from now on. Moves no credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdraftSet {
    pub tenant: String,
    pub balance: String,
    /// >= 0; 0 removes the overdraft.
    pub limit: i64,
}

/// An account's spend cap, as an operator set it, and the window it leaves: absolute
/// states, as accounts are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSet {
    pub tenant: String,
    pub balance: String,
    /// None: the cap was removed.
    pub cap: Option<CapTerms>,
    pub window: CapWindow,
}

/// The spend windows of a tenant's capped accounts that a spending decision moved, as
/// they are after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    pub tenant: String,
    pub windows: Vec<(String, CapWindow)>,
}

/// A refill as it is after the decision: its terms (none: removed) and when the last
/// period it granted started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefillSet {
    pub tenant: String,
    pub refill_id: String,
    pub refill: Option<RefillTerms>,
    pub last_start_ms: Option<i64>,
}

/// An account's watch as it is after an operator's call (none: no longer watched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSet {
    pub tenant: String,
    pub balance: String,
    pub watch: Option<Watch>,
}

/// One event of a watched account. Its id is the store's: the position of the event
/// in the ledger's order of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub tenant: String,
    pub balance: String,
    pub kind: EventKind,
}

/// Journal lines of one decision and the account states they lead to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingRecord {
    pub entries: Vec<EntryRecord>,
    /// Every account the decision touched (an authorize: every described balance),
    /// as it is after the decision.
    pub accounts: Vec<(String, AccountState)>,
    /// Every lot the decision touched, by balance, as it is after the decision. Added
    /// in record format 3.
    pub lots: Vec<(String, Lot)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub balance: String,
    pub kind: EntryKind,
    /// Always > 0; the kind says which way it moved.
    pub amount: i64,
    /// The lot the credits came from or went to: one entry moves one lot.
    /// [`LEGACY_LOT`](super::lots::LEGACY_LOT) for credits granted before lots
    /// existed, and for `open` entries, which move no balance. Added in record format 3.
    pub lot: LotId,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkRecord {
    pub scope: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub policy: u32,
    pub name: String,
    pub version: String,
    pub balances: Vec<String>,
    pub hold_ttl_ms: u64,
    /// The component; none for a policy linked natively.
    #[serde(with = "serde_bytes")]
    pub component: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub policy: u32,
    /// `start`, `http`, `watch`, `rollback`, ...
    pub via: String,
}

/// Where a transaction is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransactionState {
    /// The policy or the host refused it; the answer is kept for retries.
    Rejected,
    /// Admitted; waiting for settle (its hold, if any, is open).
    Open,
    /// Settled; the receipt is kept for retries.
    Settled,
    /// Its hold passed its TTL unsettled and was released.
    Expired,
}

impl TransactionState {
    pub const ALL: [TransactionState; 4] = [
        TransactionState::Rejected,
        TransactionState::Open,
        TransactionState::Settled,
        TransactionState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransactionState::Rejected => "rejected",
            TransactionState::Open => "open",
            TransactionState::Settled => "settled",
            TransactionState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// The rows of a ledger written before the log, carried into it at migration. Entry
/// ids, times and policies are the old ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub accounts: Vec<(String, String, AccountState)>,
    pub transactions: Vec<ImportedTransaction>,
    pub journal: Vec<ImportedEntry>,
    /// `(tenant, scope, key, transaction_id)`.
    pub marks: Vec<(String, String, String, String)>,
    pub grants: Vec<ImportedGrant>,
    pub activations: Vec<ImportedActivation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedTransaction {
    pub id: String,
    pub tenant: String,
    pub state: TransactionState,
    pub fingerprint: Digest,
    pub policy: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub operation: String,
    pub request: RequestRecord,
    pub authorization: AuthorizationRecord,
    pub receipt: Option<ReceiptRecord>,
    pub held: AmountList,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedEntry {
    pub id: u64,
    pub transaction_id: String,
    pub tenant: String,
    pub balance: String,
    pub kind: EntryKind,
    pub amount: i64,
    pub policy: u32,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedGrant {
    pub grant_id: String,
    pub tenant: String,
    pub balance: String,
    pub amount: i64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedActivation {
    pub policy: u32,
    pub via: String,
    pub at_ms: u64,
}

impl Decision {
    /// The tenant whose accounts the decision posts to, and its posting.
    pub fn posting(&self) -> Option<(&str, &PostingRecord)> {
        match self {
            Decision::Authorize(decision) => Some((&decision.tenant, &decision.posting)),
            Decision::Settle(decision) => Some((&decision.tenant, &decision.posting)),
            Decision::Expire(decision) => Some((&decision.tenant, &decision.posting)),
            Decision::Grant(decision) => Some((&decision.tenant, &decision.posting)),
            Decision::CloseLot(decision) => Some((&decision.tenant, &decision.posting)),
            Decision::Policy(_)
            | Decision::Activate(_)
            | Decision::Import(_)
            | Decision::Overdraft(_)
            | Decision::Cap(_)
            | Decision::Spend(_)
            | Decision::Refill(_)
            | Decision::Watch(_)
            | Decision::Event(_)
            | Decision::Schedule(_) => None,
        }
    }

    /// The journal entries this decision wrote, in order.
    pub fn entries(&self) -> &[EntryRecord] {
        match self {
            Decision::Authorize(decision) => &decision.posting.entries,
            Decision::Settle(decision) => &decision.posting.entries,
            Decision::Expire(decision) => &decision.posting.entries,
            Decision::Grant(decision) => &decision.posting.entries,
            Decision::CloseLot(decision) => &decision.posting.entries,
            Decision::Policy(_)
            | Decision::Activate(_)
            | Decision::Import(_)
            | Decision::Overdraft(_)
            | Decision::Cap(_)
            | Decision::Spend(_)
            | Decision::Refill(_)
            | Decision::Watch(_)
            | Decision::Event(_)
            | Decision::Schedule(_) => &[],
        }
    }
}

pub fn amount_list(amounts: &Amounts) -> AmountList {
    amounts
        .iter()
        .map(|(balance, amount)| (balance.clone(), *amount))
        .collect()
}

pub fn amounts(list: &AmountList) -> Amounts {
    list.iter()
        .map(|(balance, amount)| (balance.clone(), *amount))
        .collect()
}

fn pairs<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<(String, String)> {
    map.into_iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Meta as recorded: compact JSON text; an answer parses it back.
fn meta_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::Object(Default::default()))
}

fn error_pair(error: &ErrorBody) -> (String, String) {
    (error.code.clone(), error.message.clone())
}

fn error_body((code, message): &(String, String)) -> ErrorBody {
    ErrorBody {
        code: code.clone(),
        message: message.clone(),
    }
}

impl AuthorizationRecord {
    pub fn of(answer: &Authorization) -> Self {
        let error = if answer.admitted {
            &answer.failed_open
        } else {
            &answer.error
        };
        Self {
            admitted: answer.admitted,
            status: answer.status,
            error: error.as_ref().map(error_pair),
            admitted_items: answer.admitted_items,
            held: amount_list(&answer.held),
            charged: amount_list(&answer.charged),
            headers: pairs(&answer.headers),
            meta_json: answer.meta.to_string(),
            balances: amount_list(&answer.balances),
        }
    }

    /// The failure of the policy an admission was made open despite.
    pub fn failed_open(&self) -> Option<ErrorBody> {
        self.error
            .as_ref()
            .filter(|_| self.admitted)
            .map(error_body)
    }

    pub fn answer(&self, transaction_id: &str, policy: PolicyRef) -> Authorization {
        Authorization {
            transaction_id: transaction_id.to_owned(),
            admitted: self.admitted,
            status: self.status,
            error: self
                .error
                .as_ref()
                .filter(|_| !self.admitted)
                .map(error_body),
            failed_open: self.failed_open(),
            admitted_items: self.admitted_items,
            held: amounts(&self.held),
            charged: amounts(&self.charged),
            headers: self.headers.iter().cloned().collect(),
            meta: meta_value(&self.meta_json),
            balances: amounts(&self.balances),
            policy,
        }
    }
}

impl ReceiptRecord {
    pub fn of(answer: &Receipt) -> Self {
        Self {
            charged: amount_list(&answer.charged),
            released: amount_list(&answer.released),
            uncollected: amount_list(&answer.uncollected),
            headers: pairs(&answer.headers),
            meta_json: answer.meta.to_string(),
            balances: amount_list(&answer.balances),
        }
    }

    /// The answer; `admission` is the transaction's authorization, which says whether
    /// it was admitted open (and so settled without the policy).
    pub fn answer(
        &self,
        transaction_id: &str,
        policy: PolicyRef,
        admission: &AuthorizationRecord,
    ) -> Receipt {
        Receipt {
            failed_open: admission.failed_open(),
            transaction_id: transaction_id.to_owned(),
            charged: amounts(&self.charged),
            released: amounts(&self.released),
            uncollected: amounts(&self.uncollected),
            headers: self.headers.iter().cloned().collect(),
            meta: meta_value(&self.meta_json),
            balances: amounts(&self.balances),
            policy,
        }
    }
}
