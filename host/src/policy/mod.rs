//! The policy runtime: where a charge is decided.
//!
//! A policy is a WebAssembly component of the `creditgate:policy` world
//! ([`component`]), or, for measuring what the sandbox costs, the same rules linked
//! natively ([`native`]). Either way the meter sees one [`PolicyRuntime`], and every
//! answer passes [`contract`] checks before it can move a credit.
//!
//! The runtime never touches the store: its only view of the ledger is the balances it
//! is given and the read-only [`MarkLookup`].

pub mod component;
pub mod contract;
pub mod native;

use std::fmt;

use sha2::{Digest as _, Sha256};

pub use contract::{AuthorizeDecision, PolicyInfo, SettleDecision};
pub use creditgate_policy_sdk as sdk;

use crate::error::MeterError;

/// The sha256 of a policy's component bytes, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyDigest(String);

impl PolicyDigest {
    pub fn of(bytes: &[u8]) -> Self {
        let hash = Sha256::digest(bytes);
        Self(hash.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// A digest read back from the store.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Answers "which of these keys does the tenant already have under `scope`?", seeing
/// every decision committed before the one in progress.
pub trait MarkLookup {
    fn marked(&self, tenant: &str, scope: &str, keys: &[String]) -> Result<Vec<bool>, MeterError>;
}

/// A loaded policy that can decide requests. One instance serves one thread; it was
/// built with the [`MarkLookup`] its `marked` calls go to.
pub trait PolicyRuntime {
    fn info(&self) -> &PolicyInfo;

    fn authorize(
        &mut self,
        request: &sdk::Request,
        balances: &[sdk::BalanceAmount],
    ) -> Result<AuthorizeDecision, MeterError>;

    fn settle(
        &mut self,
        admitted: &sdk::Admitted,
        outcome: &sdk::Outcome,
        balances: &[sdk::BalanceAmount],
    ) -> Result<SettleDecision, MeterError>;
}
