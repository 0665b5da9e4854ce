//! The per-call bounds of a policy, as flags: `serve`, `check`, `gallery` and `bench`
//! run policies under the same ones (docs/policy-budget.md).

use clap::Args;

use creditgate::policy::component::Limits;

const DEFAULTS: Limits = Limits::DEFAULT;

#[derive(Args, Clone, Copy)]
pub struct PolicyLimitArgs {
    /// Fuel for one policy call: the guest's instructions and the host's work for it
    /// (~5 ms of guest code per 10 million here).
    #[arg(long, default_value_t = DEFAULTS.fuel_per_call, value_parser = clap::value_parser!(u64).range(1..))]
    policy_fuel_per_call: u64,
    /// Wall-clock time one policy call may take, in ms: keep it well above the time the
    /// fuel budget takes, or a descheduled call fails.
    #[arg(long, default_value_t = DEFAULTS.wall_ms_per_call, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    policy_wall_ms_per_call: u64,
}

impl PolicyLimitArgs {
    pub fn limits(self) -> Limits {
        Limits {
            fuel_per_call: self.policy_fuel_per_call,
            wall_ms_per_call: self.policy_wall_ms_per_call,
            ..DEFAULTS
        }
    }
}
