//! The policy runtime: where a charge is decided.
//!
//! A policy is a WebAssembly component of the `creditgate:policy` world
//! ([`component`]), or, for measuring what the sandbox costs, the same rules linked
//! natively ([`native`]). Either way the meter sees one [`PolicyRuntime`], and every
//! answer passes [`contract`] checks before it can move a credit. A component becomes
//! active only through the [`probe`] gate: the contract probes, within their cost, and,
//! on a meter with trusted keys, only once [`signing`] found it signed by one of them.
//!
//! The runtime never touches the store: its only view of the ledger is the balances it
//! is given and the read-only [`MarkLookup`].

pub mod component;
pub mod contract;
pub mod native;
pub mod probe;
pub mod signing;
mod wasi;

use std::fmt;

use sha2::{Digest as _, Sha256};

pub use contract::{AuthorizeDecision, ContractVersion, PolicyInfo, SettleDecision};
pub use creditgate_policy_sdk as sdk;
pub use signing::TrustedKeys;

use crate::error::MeterError;

/// The sha256 of a policy's component bytes; shown as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyDigest([u8; 32]);

impl PolicyDigest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 64 hex digits of a digest.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * index..2 * index + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Refuses a module whose bytes are not the pinned ones, before anything compiles
    /// them: what an operator activates is what they reviewed, byte for byte.
    pub fn check_pinned(bytes: &[u8], pinned: Option<&Self>) -> Result<(), MeterError> {
        match pinned {
            Some(expected) if *expected != Self::of(bytes) => Err(MeterError::DigestMismatch {
                expected: expected.to_string(),
                actual: Self::of(bytes).to_string(),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for PolicyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (index, byte) in self.0.iter().enumerate() {
            text[2 * index] = HEX[usize::from(byte >> 4)];
            text[2 * index + 1] = HEX[usize::from(byte & 0x0f)];
        }
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Answers "which of these keys does the tenant already have under `scope`?", seeing
/// every decision committed before the one in progress.
pub trait MarkLookup {
    /// Reads the store only when at most `stored_keys_max` keys need it (the rest are
    /// answered from memory); answers `None`, having read nothing, when more would.
    fn marked(
        &self,
        tenant: &str,
        scope: &str,
        keys: &[String],
        stored_keys_max: usize,
    ) -> Result<Option<MarkAnswers>, MeterError>;
}

/// A lookup's answers, one per key, and how many keys the store was asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkAnswers {
    pub marked: Vec<bool>,
    pub stored_keys: usize,
}

/// What one policy call cost: fuel (guest instructions and host work) and wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCost {
    pub fuel: u64,
    pub wall_us: u64,
}

impl CallCost {
    /// A call that started at `started` and burnt `fuel`.
    pub fn since(started: std::time::Instant, fuel: u64) -> Self {
        Self {
            fuel,
            wall_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// A loaded policy that can decide requests. One instance serves one thread; it was
/// built with the [`MarkLookup`] its `marked` calls go to.
pub trait PolicyRuntime {
    fn info(&self) -> &PolicyInfo;

    /// What the last authorize or settle cost, failed or not.
    fn last_cost(&self) -> CallCost;

    /// Decides a request; `balances` are the tenant's, one per balance the policy
    /// describes, as the latest contract gives them.
    fn authorize(
        &mut self,
        request: &sdk::Request,
        balances: &[sdk::BalanceState],
    ) -> Result<AuthorizeDecision, MeterError>;

    /// Prices the outcome of an admitted request; `balances` as for
    /// [`PolicyRuntime::authorize`], not counting the transaction's own hold.
    fn settle(
        &mut self,
        admitted: &sdk::Admitted,
        outcome: &sdk::Outcome,
        balances: &[sdk::BalanceState],
    ) -> Result<SettleDecision, MeterError>;
}
