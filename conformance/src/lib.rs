//! The conformance suite: what any policy module must pass before it touches money.
//!
//! - **Contract checks** ([`creditgate::policy::probe`], the activation gate) hold for any module: it loads and describes itself
//!   well; its answers keep the contract (no negative or overflowing amounts, no
//!   undescribed balance, admitted items within the batch, meta a JSON object); it is
//!   deterministic; it stays within its budget (fuel, wall-clock time, host-call
//!   limits) and its calls cost at most half of it; it does not trap. The report says
//!   what the calls cost (fuel and wall time, median and maximum).
//! - **Cases** ([`case`], in `tests/conformance/cases`) are language-neutral JSON files,
//!   one scenario each, stating the exact answers, balances, journal entries and
//!   events each step must produce; they run against the module on a fresh temporary
//!   ledger ([`runner`]).
//!
//! `creditgate check` prints the report; activation, and a meter opened on a given
//! component, refuse a module that fails the contract checks.

pub mod case;
pub mod fuzzing;
pub mod runner;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use case::{Action, LoadedCase, Tier};
use runner::ModuleResolver;

use creditgate::policy::component::{self, Limits};
use creditgate::policy::{ContractVersion, probe};
use creditgate::store::scratch::ScratchStore;

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub rule: String,
    pub tier: Tier,
    /// None when it passed; otherwise expected vs actual.
    pub failure: Option<String>,
}

/// The outcome of checking one module.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `name version (sha256 ...), contract VERSION` once the module loaded.
    pub module: Option<String>,
    pub profile: String,
    pub rows: Vec<Row>,
    /// What the contract probes' calls cost, once the module loaded.
    pub cost: Option<probe::CostSummary>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.rows.iter().filter(|row| row.failure.is_none()).count()
    }

    /// Failures that fail the check (`should` cases only warn).
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|row| row.failure.is_some() && row.tier == Tier::Must)
            .count()
    }

    pub fn warned(&self) -> usize {
        self.rows
            .iter()
            .filter(|row| row.failure.is_some() && row.tier == Tier::Should)
            .count()
    }

    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    /// The table: a line a row, the failure's detail under it, then the totals line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(module) = &self.module {
            let _ = writeln!(out, "module {module}, profile {}", self.profile);
        }
        if let Some(cost) = &self.cost {
            let _ = writeln!(out, "{cost}");
        }
        let width = self
            .rows
            .iter()
            .map(|row| row.name.len())
            .max()
            .unwrap_or(0);
        for row in &self.rows {
            let verdict = match (&row.failure, row.tier) {
                (None, _) => "PASS",
                (Some(_), Tier::Must) => "FAIL",
                (Some(_), Tier::Should) => "WARN",
            };
            let _ = writeln!(out, "{verdict}  {:<width$}  {}", row.name, row.rule);
            if let Some(failure) = &row.failure {
                let _ = writeln!(out, "      {failure}");
            }
        }
        let warned = self.warned();
        let _ = write!(out, "{} passed, {} failed", self.passed(), self.failed());
        if warned > 0 {
            let _ = write!(out, " ({warned} should-cases warned)");
        }
        out.push('\n');
        out
    }
}

/// Runs the contract checks, then every case whose profile matches `profile` (by
/// default the module's own `describe` name). A case file that could not be read is a
/// failed row naming the file and the problem.
pub fn check_module(
    module: &[u8],
    cases: &[LoadedCase],
    profile: Option<&str>,
    limits: Limits,
    resolve: ModuleResolver<'_>,
    store: &ScratchStore,
) -> Report {
    let mut report = Report::default();
    let engine = match component::engine() {
        Ok(engine) => engine,
        Err(error) => {
            report.rows.push(loaded_row(Some(error.to_string())));
            return report;
        }
    };
    let operations: BTreeSet<String> = cases
        .iter()
        .filter_map(|loaded| loaded.case.as_ref().ok())
        .flat_map(|case| case.steps.iter())
        .filter_map(|step| match &step.action {
            Action::Authorize { operation, .. } => Some(operation.clone()),
            _ => None,
        })
        .collect();
    let info = match probe::check_contract(&engine, module, limits, &operations) {
        Ok((info, probed)) => {
            report.rows.push(loaded_row(None));
            report.rows.extend(contract_rows(probed.checks));
            report.cost = Some(probed.cost);
            info
        }
        Err(error) => {
            report.rows.push(loaded_row(Some(error.to_string())));
            return report;
        }
    };
    report.module = Some(format!(
        "{} {} (sha256 {}), contract {}",
        info.name, info.version, info.digest, info.contract
    ));
    report.profile = profile.unwrap_or(&info.name).to_owned();
    // Compiled once for the run: every case's meter deserializes it from here. Without
    // the directory, each case only compiles again.
    let compiled = tempfile::tempdir();
    let compiled = compiled.as_ref().ok().map(tempfile::TempDir::path);
    for loaded in cases {
        let row = match &loaded.case {
            Err(problem) => Some(Row {
                name: loaded.name.clone(),
                rule: "the case file is valid".to_owned(),
                tier: Tier::Must,
                failure: Some(format!("{}: {problem}", loaded.path.display())),
            }),
            Ok(case) if case.profile == report.profile => Some(Row {
                name: loaded.name.clone(),
                rule: case.rule.clone(),
                tier: case.tier,
                failure: runner::run_case(case, module, resolve, store, limits, compiled).err(),
            }),
            Ok(_) => None,
        };
        report.rows.extend(row);
    }
    report
}

fn loaded_row(failure: Option<String>) -> Row {
    Row {
        name: "contract/loads-and-describes".to_owned(),
        rule: format!(
            "the module is a component of a contract the host implements ({}) with a \
             well-formed describe",
            ContractVersion::implemented()
        ),
        tier: Tier::Must,
        failure,
    }
}

fn contract_rows(checks: Vec<probe::ContractCheck>) -> impl Iterator<Item = Row> {
    checks.into_iter().map(|check| Row {
        name: check.name.to_owned(),
        rule: check.rule,
        tier: Tier::Must,
        failure: check.failure,
    })
}
