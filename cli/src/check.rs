//! `creditgate check`: the conformance suite against one module.

use std::path::PathBuf;

use clap::Args;

use creditgate::store::scratch::ScratchStore;
use creditgate_conformance::{self as conformance, case};

use super::limits::PolicyLimitArgs;

/// The policy fixtures embedded by `build.rs`.
mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// Where the repository keeps its conformance cases.
pub const DEFAULT_CASES: &str = "tests/conformance/cases";

#[derive(Args)]
pub struct CheckArgs {
    /// The policy component to check (.wasm).
    module: PathBuf,
    /// The directory of case files (searched recursively).
    #[arg(long, default_value = DEFAULT_CASES)]
    cases: PathBuf,
    /// Run the cases of this profile; defaults to the module's describe name.
    #[arg(long)]
    profile: Option<String>,
    /// Where each case's fresh ledger is made: `sqlite` (a temporary file), or a
    /// `postgres://...` database (a schema per case, dropped after).
    #[arg(long, default_value = "sqlite")]
    db: String,
    #[command(flatten)]
    limits: PolicyLimitArgs,
}

/// Exit status 0 when every must-check passed, 1 otherwise.
pub fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let module = super::read_policy(&args.module)?;
    let cases = if args.cases.is_dir() {
        case::load_dir(&args.cases).map_err(anyhow::Error::msg)?
    } else if args.cases.as_os_str() == DEFAULT_CASES {
        Vec::new()
    } else {
        anyhow::bail!(
            "the cases directory {} does not exist",
            args.cases.display()
        );
    };
    // `swap_policy` steps name a fixture this binary carries: nothing is read from disk.
    let resolve = |name: &str| {
        fixtures::FIXTURES
            .iter()
            .find(|(fixture, _)| *fixture == name)
            .map(|(_, bytes)| bytes.to_vec())
            .ok_or_else(|| {
                let known: Vec<&str> = fixtures::FIXTURES.iter().map(|(name, _)| *name).collect();
                format!(
                    "no module named '{name}': a case may swap to {}",
                    known.join(", ")
                )
            })
    };
    println!("creditgate check {}", args.module.display());
    let report = conformance::check_module(
        &module,
        &cases,
        args.profile.as_deref(),
        args.limits.limits(),
        &resolve,
        &ScratchStore::parse(&args.db),
    );
    print!("{}", report.render());
    Ok(report.ok())
}
