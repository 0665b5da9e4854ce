//! The case file format (`tests/conformance/case.schema.json` is its schema).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use creditgate::model::{Amounts, LevelTerms, SpendCapView, ThresholdTerms};

/// The schema every case file must satisfy, compiled into the binary.
pub const SCHEMA: &str = include_str!("../../tests/conformance/case.schema.json");

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub description: String,
    pub profile: String,
    pub rule: String,
    #[serde(default)]
    pub tier: Tier,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Must,
    Should,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    #[serde(flatten)]
    pub action: Action,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Grant {
        tenant: String,
        balance: String,
        amount: i64,
        grant_id: Option<String>,
        /// The grant takes effect this long after the step (none: at once).
        effective_in_ms: Option<u64>,
        /// The lot expires this long after the step (none: never).
        expires_in_ms: Option<u64>,
        #[serde(default)]
        priority: i32,
        category: Option<String>,
    },
    /// An operator voids a grant: its lot's unspent remainder leaves (before it takes
    /// effect: it never will).
    Void {
        tenant: String,
        grant_id: String,
    },
    /// An operator sets a refill (`balance`, `amount`, `every`, `mode`, ...), anchored
    /// at the step, or removes it (`"remove": true`); the schema allows one or the other.
    Refill {
        tenant: String,
        refill_id: String,
        balance: Option<String>,
        amount: Option<i64>,
        every: Option<String>,
        mode: Option<String>,
        rollover_cap: Option<i64>,
        /// An IANA zone; `UTC` when absent.
        time_zone: Option<String>,
        #[serde(default)]
        priority: i32,
        category: Option<String>,
        #[serde(default)]
        remove: bool,
    },
    /// An operator sets an account's overdraft limit.
    Overdraft {
        tenant: String,
        balance: String,
        limit: i64,
    },
    /// An operator sets an account's spend cap (`cap`, `window`, `time_zone`), or
    /// removes it (`"remove": true`); the schema allows one or the other.
    SpendCap {
        tenant: String,
        balance: String,
        cap: Option<i64>,
        window: Option<String>,
        /// An IANA zone; `UTC` when absent.
        time_zone: Option<String>,
        #[serde(default)]
        remove: bool,
    },
    /// An operator watches an account (`levels`, `lot_expiring_lead_ms`; neither:
    /// watched without levels), or stops watching it (`"remove": true`); the schema
    /// allows one or the other.
    Thresholds {
        tenant: String,
        balance: String,
        levels: Option<Vec<LevelTerms>>,
        lot_expiring_lead_ms: Option<i64>,
        #[serde(default)]
        remove: bool,
    },
    Authorize {
        transaction_id: String,
        tenant: String,
        operation: String,
        #[serde(default)]
        items: Vec<String>,
        #[serde(default)]
        attributes: BTreeMap<String, String>,
    },
    Settle {
        transaction_id: String,
        status: u16,
        #[serde(default)]
        attributes: BTreeMap<String, String>,
    },
    Repeat(usize),
    AdvanceMs(u64),
    SwapPolicy(String),
    /// Restart on the same ledger with the module under check, as after a crash or a
    /// deploy: what the ledger keeps must come back. Needs no other module.
    Restart {},
}

/// The expected outcome of a step; `None` fields are not checked.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expect {
    pub admitted: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub status: Option<Option<u16>>,
    #[serde(default, deserialize_with = "present")]
    pub code: Option<Option<String>>,
    pub admitted_items: Option<u32>,
    pub held: Option<Amounts>,
    pub charged: Option<Amounts>,
    pub released: Option<Amounts>,
    pub uncollected: Option<Amounts>,
    pub headers: Option<BTreeMap<String, String>>,
    pub meta: Option<serde_json::Value>,
    pub error: Option<ExpectedError>,
    pub balances: Option<BTreeMap<String, Amounts>>,
    pub holds: Option<BTreeMap<String, Amounts>>,
    /// Per tenant, its spend caps with their current windows (`{}`: none).
    pub spend_caps: Option<BTreeMap<String, BTreeMap<String, SpendCapView>>>,
    /// Per tenant, what an operator watches on each balance (`{}`: nothing).
    pub thresholds: Option<BTreeMap<String, BTreeMap<String, ThresholdTerms>>>,
    /// Exactly the events the step raised, in the feed's order (`[]`: none).
    pub events: Option<Vec<ExpectedEvent>>,
    pub journal: Option<Vec<ExpectedEntry>>,
    /// Per tenant, every lot in the listing's order (burn order per balance), exactly.
    pub lots: Option<BTreeMap<String, Vec<ExpectedLot>>>,
    pub expired: Option<usize>,
}

/// A lot as a case states it: named by its grant (lot numbers differ by store).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ExpectedLot {
    pub grant_id: String,
    pub balance: String,
    pub remaining: i64,
    /// `open`, `expired` or `voided`.
    pub state: String,
}

/// `"status": null` means "expected to be null", not "not checked".
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExpectedError {
    pub status: u16,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ExpectedEntry {
    pub tenant: String,
    pub balance: String,
    pub kind: String,
    pub amount: i64,
}

/// An event as a case states it: the feed's event without its `id` and `at_ms`, and
/// without the ledger's number for a lot (`lot`, which differs between stores): the
/// runner checks that it numbers the lot `grant_id` granted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ExpectedEvent {
    pub kind: String,
    pub tenant: String,
    pub balance: String,
    pub details: serde_json::Value,
}

/// A case file, read and checked against the schema, or the reason it could not be.
#[derive(Debug)]
pub struct LoadedCase {
    /// The file's path below the cases directory, without `.json`.
    pub name: String,
    pub path: PathBuf,
    pub case: Result<Case, String>,
}

/// Reads every `*.json` below `dir` (sorted), validating each against [`SCHEMA`].
pub fn load_dir(dir: &Path) -> Result<Vec<LoadedCase>, String> {
    let validator = validator()?;
    let mut paths = Vec::new();
    collect_json(dir, &mut paths)
        .map_err(|error| format!("cannot read the cases directory {}: {error}", dir.display()))?;
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/");
            let case = load_file(&path, &validator);
            LoadedCase { name, path, case }
        })
        .collect())
}

fn collect_json(dir: &Path, paths: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_json(&path, paths)?;
        } else if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            paths.push(path);
        }
    }
    Ok(())
}

/// The compiled [`SCHEMA`].
pub fn validator() -> Result<jsonschema::Validator, String> {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA)
        .map_err(|error| format!("the built-in case schema is not JSON: {error}"))?;
    jsonschema::validator_for(&schema)
        .map_err(|error| format!("the built-in case schema is invalid: {error}"))
}

fn load_file(path: &Path, validator: &jsonschema::Validator) -> Result<Case, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
    parse(&text, validator)
}

/// A case from the text of its file, checked against the schema ([`validator`]).
pub fn parse(text: &str, validator: &jsonschema::Validator) -> Result<Case, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let problems: Vec<String> = validator
        .iter_errors(&value)
        .map(|error| {
            let at = error.instance_path().to_string();
            format!("at '{}': {error}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if !problems.is_empty() {
        return Err(format!("breaks the case schema: {}", problems.join("; ")));
    }
    serde_json::from_value(value).map_err(|error| format!("cannot read the case: {error}"))
}
