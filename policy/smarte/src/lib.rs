//! SMARTe-style enrichment credits (`shared/seeds/smarte-credit-usage.txt`).
//!
//! - Credits are validated before processing: authorize holds one credit per requested
//!   record and rejects with 402 `insufficient_credits` when the balance is short, so
//!   nothing is processed.
//! - Credits are deducted only when data is delivered: settle charges one credit per
//!   record delivered (a 2xx answer with `records` >= 1), and nothing when
//!   authentication or authorization fails (401/403), input validation fails (400/422),
//!   the request is rate limited (429), nothing matches (404 or `records=0`), the answer
//!   holds no enrichment data (`fields=0`), or the call ran in audit-only mode
//!   (`mode=AUD`). The rest of the hold is released by the host.
//! - Every settle of a 2xx answer carries `credits-deducted: N` (0 included), and every
//!   settle carries `x-transaction-id`.

mod rules;

pub use rules::*;

creditgate_policy_sdk::export_policy!(Smarte);
