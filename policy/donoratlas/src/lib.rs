//! DonorAtlas-style partners API credits (`shared/seeds/donoratlas-credits-and-billing.txt`).
//!
//! - Two balances: `enhancement` and `export`.
//! - `enhance` (items = persons): one enhancement credit per submitted person, charged
//!   at authorize whatever the outcome. Zero credits: 402 `payment_required`. Fewer
//!   credits than persons: the first N are admitted (202, `partial: true`), the rest
//!   dropped.
//! - `export` (items = donor ids): one export credit per unique donor this tenant never
//!   exported, charged and marked at authorize; duplicates inside a request count once,
//!   re-exports are free. More new donors than credits: 402 `payment_required`, nothing
//!   exported.
//! - `search`, `network.*`, `list.*` and `profile.get` are free; any other operation is
//!   rejected (400 `unknown_operation`), never admitted free.

mod rules;

pub use rules::*;

creditgate_policy_sdk::export_policy!(DonorAtlas);
