//! The failure mode, as flags of `serve` (docs/policy-budget.md, "The failure mode").

use clap::Args;

use creditgate::meter::failure::{FailureMode, FailurePolicy};

#[derive(Args, Clone)]
pub struct FailureArgs {
    /// What an authorize does when its policy fails (traps, breaks the contract, passes
    /// a bound, or its tenant's breaker is open): `closed` refuses it with the failure's
    /// error; `open` admits it unpriced while the tenant's exposure window has room.
    #[arg(long, default_value = "closed", value_parser = mode)]
    policy_failure_mode: FailureMode,
    /// The mode for one operation, overriding --policy-failure-mode: OPERATION=open or
    /// OPERATION=closed. Repeatable.
    #[arg(long = "policy-failure-mode-for", value_name = "OPERATION=MODE", value_parser = operation_mode)]
    per_operation: Vec<(String, FailureMode)>,
    /// The exposure one open admission counts against its tenant's window, in credits.
    #[arg(long, default_value_t = FailurePolicy::OPEN_CREDITS_PER_REQUEST, value_parser = clap::value_parser!(i64).range(1..))]
    failure_open_credits_per_request: i64,
    /// The exposure a tenant may reach in one hour of open admissions, in credits;
    /// past it, its policy failures fail closed until the next hour.
    #[arg(long, default_value_t = FailurePolicy::OPEN_CREDITS_PER_TENANT_PER_HOUR, value_parser = clap::value_parser!(i64).range(0..))]
    failure_open_credits_per_tenant_per_hour: i64,
}

impl FailureArgs {
    pub fn policy(&self) -> FailurePolicy {
        FailurePolicy {
            mode: self.policy_failure_mode,
            per_operation: self.per_operation.iter().cloned().collect(),
            open_credits_per_request: self.failure_open_credits_per_request,
            open_credits_per_tenant_per_hour: self.failure_open_credits_per_tenant_per_hour,
        }
    }
}

fn mode(text: &str) -> Result<FailureMode, String> {
    FailureMode::parse(text)
        .ok_or_else(|| format!("'{text}' is not a failure mode: closed or open"))
}

fn operation_mode(text: &str) -> Result<(String, FailureMode), String> {
    let (operation, text) = text
        .split_once('=')
        .filter(|(operation, _)| !operation.is_empty())
        .ok_or_else(|| format!("'{text}' is not OPERATION=closed or OPERATION=open"))?;
    Ok((operation.to_owned(), mode(text)?))
}
