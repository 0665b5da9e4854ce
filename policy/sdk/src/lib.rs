//! Write creditgate billing policies in plain Rust.
//!
//! A policy is a type implementing [`Policy`]: three pure functions that price API
//! calls in credits. The same code compiles two ways:
//!
//! - for `wasm32-wasip2`, [`export_policy!`] turns it into a WebAssembly component of
//!   the `creditgate:policy` world (`wit/policy.wit`) that the host loads and swaps at
//!   run time;
//! - natively, it is an ordinary crate, so its rules have plain unit tests, and the host
//!   can link it directly (the benchmark measures what the wasm boundary costs).
//!
//! A policy never writes the ledger. It answers with a [`Verdict`] or a [`Settlement`];
//! the host applies it atomically and enforces its own guarantees (no balance below
//! zero, idempotency, serializable decisions per tenant) whatever the policy says.
//!
//! Policies run with no files, network, environment, clock or randomness: keep them
//! deterministic, and prefer `BTreeMap`/`BTreeSet` to `HashMap` (whose random seed
//! is not available inside the sandbox).

mod json;
mod types;

pub use json::JsonObject;
pub use types::*;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod component;

/// The policy's read-only view of the tenant's marks, answered by the host.
pub trait Ledger {
    /// For each key, in order, whether the tenant already has the mark `(scope, key)`.
    fn marked(&self, scope: &str, keys: &[String]) -> Vec<bool>;
}

/// A billing policy: pure functions from a request (and later its outcome) to credits.
pub trait Policy {
    /// Name, version, balances and hold TTL. Called once when the host loads the policy.
    fn describe() -> Description;

    /// Decide a request. `balances` holds each balance's state now (open holds already
    /// taken out of `available`), one entry per balance [`Policy::describe`] lists;
    /// [`spendable_of`] reads what can still be spent on one.
    fn authorize(request: &Request, balances: &[BalanceState], ledger: &dyn Ledger) -> Verdict;

    /// Price the outcome of an admitted request. `balances` holds each balance's state
    /// now, not counting this transaction's own hold.
    fn settle(
        admitted: &Admitted,
        outcome: &Outcome,
        balances: &[BalanceState],
        ledger: &dyn Ledger,
    ) -> Settlement;
}

/// Export a [`Policy`] as the component's implementation of the `creditgate:policy`
/// world. Expands to nothing when not compiling for wasm, so the crate stays a plain
/// library natively.
///
/// ```
/// use creditgate_policy_sdk::{
///     Admission, Admitted, BalanceState, Description, Ledger, Outcome, Policy, Request,
///     Settlement, Verdict,
/// };
///
/// /// Admits everything and charges nothing.
/// pub struct Free;
///
/// impl Policy for Free {
///     fn describe() -> Description {
///         Description {
///             name: "free".into(),
///             version: "1.0.0".into(),
///             balances: vec![],
///             hold_ttl_ms: 60_000,
///         }
///     }
///     fn authorize(request: &Request, _: &[BalanceState], _: &dyn Ledger) -> Verdict {
///         let admitted_items = u32::try_from(request.items.len()).unwrap_or(u32::MAX);
///         Verdict::Admit(Admission { admitted_items, ..Admission::default() })
///     }
///     fn settle(_: &Admitted, _: &Outcome, _: &[BalanceState], _: &dyn Ledger) -> Settlement {
///         Settlement::default()
///     }
/// }
///
/// creditgate_policy_sdk::export_policy!(Free);
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        // The generated component glue is `unsafe` ABI code; the policy itself is not.
        #[allow(unsafe_code)]
        const _: () = {
            struct Component;
            impl $crate::component::Guest for Component {
                fn describe() -> $crate::component::WitDescription {
                    $crate::component::describe::<$policy>()
                }
                fn authorize(
                    request: $crate::component::WitRequest,
                    balances: ::std::vec::Vec<$crate::component::WitBalanceState>,
                ) -> $crate::component::WitVerdict {
                    $crate::component::authorize::<$policy>(request, balances)
                }
                fn settle(
                    admitted: $crate::component::WitAdmitted,
                    outcome: $crate::component::WitOutcome,
                    balances: ::std::vec::Vec<$crate::component::WitBalanceState>,
                ) -> $crate::component::WitSettlement {
                    $crate::component::settle::<$policy>(admitted, outcome, balances)
                }
            }
    $crate::component::export_bindings!(Component with_types_in $crate::component);
        };
    };
}
