//! The contract a policy's answers must keep before the host acts on them. A policy
//! that breaks it fails the request closed (`policy_invalid_verdict`); nothing moves.

use std::collections::{BTreeMap, BTreeSet};

use super::sdk;
use crate::error::MeterError;
use crate::model::Amounts;

/// Limits on what a policy may answer (TigerBeetle: put a limit on everything).
pub const BALANCES_MAX: usize = 16;
pub const HEADERS_MAX: usize = 32;
pub const MARKS_MAX: usize = 10_000;
pub const META_BYTES_MAX: usize = 16 * 1024;
pub const NAME_BYTES_MAX: usize = 64;
pub const MESSAGE_BYTES_MAX: usize = 1024;
pub const MARK_BYTES_MAX: usize = 512;
pub const HOLD_TTL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;

/// A version of the WIT contract, `creditgate:policy@VERSION`, that the host implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContractVersion {
    /// `wit/0.1.0/policy.wit` (frozen): a policy is given each balance as a
    /// `balance-amount`, what it may spend ([`sdk::BalanceState::spendable`]).
    V0_1_0,
    /// `wit/policy.wit`: a policy is given each balance as a `balance-state`, with its
    /// overdraft limit and spend cap.
    V0_2_0,
}

impl ContractVersion {
    /// Every version the host loads, oldest first.
    pub const IMPLEMENTED: [Self; 2] = [Self::V0_1_0, Self::V0_2_0];
    /// The version of `wit/policy.wit` and of the SDK's types: what a policy linked
    /// natively sees.
    pub const LATEST: Self = Self::V0_2_0;

    /// The package version, e.g. `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
        }
    }

    /// The version `text` names, if the host implements it.
    pub fn parse(text: &str) -> Option<Self> {
        Self::IMPLEMENTED
            .into_iter()
            .find(|version| version.as_str() == text)
    }

    /// The packages the host implements, for messages:
    /// `creditgate:policy@0.1.0 and creditgate:policy@0.2.0`.
    pub fn implemented() -> String {
        Self::IMPLEMENTED
            .map(|version| format!("creditgate:policy@{version}"))
            .join(" and ")
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host knows about a loaded policy, from its bytes and its `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    pub digest: super::PolicyDigest,
    pub balances: Vec<String>,
    pub hold_ttl_ms: u64,
    /// The contract the module was built against.
    pub contract: ContractVersion,
}

impl PolicyInfo {
    /// Checks a `describe` answer and pairs it with the component's digest and the
    /// contract it was built against.
    pub fn from_description(
        description: sdk::Description,
        digest: super::PolicyDigest,
        contract: ContractVersion,
    ) -> Result<Self, MeterError> {
        let invalid = |why: String| MeterError::PolicyInvalidVerdict(format!("describe: {why}"));
        check_name("name", &description.name).map_err(invalid)?;
        check_name("version", &description.version).map_err(invalid)?;
        if description.balances.len() > BALANCES_MAX {
            return Err(invalid(format!(
                "{} balances listed; at most {BALANCES_MAX}",
                description.balances.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for balance in &description.balances {
            check_name("balance", balance).map_err(invalid)?;
            if !seen.insert(balance) {
                return Err(invalid(format!("balance '{balance}' is listed twice")));
            }
        }
        if description.hold_ttl_ms == 0 || description.hold_ttl_ms > HOLD_TTL_MS_MAX {
            return Err(invalid(format!(
                "hold-ttl-ms {} is outside 1..={HOLD_TTL_MS_MAX}",
                description.hold_ttl_ms
            )));
        }
        Ok(Self {
            name: description.name,
            version: description.version,
            digest,
            balances: description.balances,
            hold_ttl_ms: description.hold_ttl_ms,
            contract,
        })
    }

    pub fn has_balance(&self, balance: &str) -> bool {
        self.balances.iter().any(|known| known == balance)
    }
}

/// A checked authorize verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthorizeDecision {
    Reject {
        status: u16,
        code: String,
        message: String,
    },
    Admit {
        status: Option<u16>,
        admitted_items: u32,
        hold: Amounts,
        charge: Amounts,
        marks: Vec<sdk::Mark>,
        headers: BTreeMap<String, String>,
        meta: serde_json::Value,
    },
}

/// A checked settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct SettleDecision {
    pub charge: Amounts,
    pub marks: Vec<sdk::Mark>,
    pub headers: BTreeMap<String, String>,
    pub meta: serde_json::Value,
}

/// Checks a verdict against the request it answers.
pub fn check_verdict(
    info: &PolicyInfo,
    items: usize,
    verdict: sdk::Verdict,
) -> Result<AuthorizeDecision, MeterError> {
    let invalid = |why: String| MeterError::PolicyInvalidVerdict(format!("authorize: {why}"));
    match verdict {
        sdk::Verdict::Reject(rejection) => {
            if !(400..=599).contains(&rejection.status) {
                return Err(invalid(format!(
                    "reject status {} is not a 4xx or 5xx",
                    rejection.status
                )));
            }
            check_code(&rejection.code).map_err(invalid)?;
            if rejection.message.is_empty() || rejection.message.len() > MESSAGE_BYTES_MAX {
                return Err(invalid(format!(
                    "reject message must have 1..={MESSAGE_BYTES_MAX} bytes"
                )));
            }
            Ok(AuthorizeDecision::Reject {
                status: rejection.status,
                code: rejection.code,
                message: rejection.message,
            })
        }
        sdk::Verdict::Admit(admission) => {
            if let Some(status) = admission.status
                && !(200..=299).contains(&status)
            {
                return Err(invalid(format!("admit status {status} is not a 2xx")));
            }
            if usize::try_from(admission.admitted_items).map_or(true, |admitted| admitted > items) {
                return Err(invalid(format!(
                    "admitted {} items of a batch of {items}",
                    admission.admitted_items
                )));
            }
            Ok(AuthorizeDecision::Admit {
                status: admission.status,
                admitted_items: admission.admitted_items,
                hold: check_amounts(info, "hold", admission.hold).map_err(invalid)?,
                charge: check_amounts(info, "charge", admission.charge).map_err(invalid)?,
                marks: check_marks(admission.marks).map_err(invalid)?,
                headers: check_headers(admission.headers).map_err(invalid)?,
                meta: check_meta(&admission.meta_json).map_err(invalid)?,
            })
        }
    }
}

/// Checks a settlement.
pub fn check_settlement(
    info: &PolicyInfo,
    settlement: sdk::Settlement,
) -> Result<SettleDecision, MeterError> {
    let invalid = |why: String| MeterError::PolicyInvalidVerdict(format!("settle: {why}"));
    Ok(SettleDecision {
        charge: check_amounts(info, "charge", settlement.charge).map_err(invalid)?,
        marks: check_marks(settlement.marks).map_err(invalid)?,
        headers: check_headers(settlement.headers).map_err(invalid)?,
        meta: check_meta(&settlement.meta_json).map_err(invalid)?,
    })
}

/// Sums amounts per balance; every amount must be >= 0, on a described balance, and
/// the sums must fit in an i64. Zero amounts are dropped.
fn check_amounts(
    info: &PolicyInfo,
    what: &str,
    amounts: Vec<sdk::BalanceAmount>,
) -> Result<Amounts, String> {
    let mut sums = Amounts::new();
    for entry in amounts {
        if !info.has_balance(&entry.balance) {
            return Err(format!(
                "{what} names balance '{}', which describe does not list",
                entry.balance
            ));
        }
        if entry.amount < 0 {
            return Err(format!(
                "{what} of {} on '{}' is negative",
                entry.amount, entry.balance
            ));
        }
        let sum = sums.entry(entry.balance).or_insert(0);
        *sum = sum
            .checked_add(entry.amount)
            .ok_or_else(|| format!("{what} amounts overflow an i64"))?;
    }
    sums.retain(|_, amount| *amount > 0);
    Ok(sums)
}

fn check_marks(marks: Vec<sdk::Mark>) -> Result<Vec<sdk::Mark>, String> {
    if marks.len() > MARKS_MAX {
        return Err(format!("{} marks; at most {MARKS_MAX}", marks.len()));
    }
    for mark in &marks {
        if mark.scope.is_empty()
            || mark.key.is_empty()
            || mark.scope.len() > MARK_BYTES_MAX
            || mark.key.len() > MARK_BYTES_MAX
            || mark.scope.contains('\0')
            || mark.key.contains('\0')
        {
            return Err(format!(
                "mark scope and key must have 1..={MARK_BYTES_MAX} bytes and no NUL character"
            ));
        }
    }
    Ok(marks)
}

fn check_headers(headers: Vec<(String, String)>) -> Result<BTreeMap<String, String>, String> {
    if headers.len() > HEADERS_MAX {
        return Err(format!("{} headers; at most {HEADERS_MAX}", headers.len()));
    }
    let mut checked = BTreeMap::new();
    for (name, value) in headers {
        let token = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
        if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.bytes().all(token) {
            return Err(format!("header name '{name}' is not a valid HTTP token"));
        }
        if value.len() > MESSAGE_BYTES_MAX || value.bytes().any(|byte| byte.is_ascii_control()) {
            return Err(format!(
                "header '{name}' has a control character or is too long"
            ));
        }
        checked.insert(name.to_ascii_lowercase(), value);
    }
    Ok(checked)
}

fn check_meta(text: &str) -> Result<serde_json::Value, String> {
    if text.len() > META_BYTES_MAX {
        return Err(format!(
            "meta has {} bytes; at most {META_BYTES_MAX}",
            text.len()
        ));
    }
    let meta: serde_json::Value = if text.is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(text).map_err(|error| format!("meta is not JSON: {error}"))?
    };
    if meta.is_object() {
        Ok(meta)
    } else {
        Err("meta is not a JSON object".to_owned())
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._-+".contains(&byte);
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.bytes().all(allowed) {
        return Err(format!(
            "{what} '{name}' must be 1..={NAME_BYTES_MAX} characters of [A-Za-z0-9._+-]"
        ));
    }
    Ok(())
}

fn check_code(code: &str) -> Result<(), String> {
    let allowed =
        |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"._".contains(&byte);
    if code.is_empty() || code.len() > NAME_BYTES_MAX || !code.bytes().all(allowed) {
        return Err(format!(
            "reject code '{code}' must be 1..={NAME_BYTES_MAX} characters of [a-z0-9._]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyDigest;

    fn info() -> PolicyInfo {
        PolicyInfo {
            name: "p".to_owned(),
            version: "1".to_owned(),
            digest: PolicyDigest::of(b"p"),
            balances: vec!["default".to_owned()],
            hold_ttl_ms: 1000,
            contract: ContractVersion::LATEST,
        }
    }

    fn admit(admission: sdk::Admission) -> Result<AuthorizeDecision, MeterError> {
        check_verdict(&info(), 2, sdk::Verdict::Admit(admission))
    }

    #[test]
    fn a_negative_hold_breaks_the_contract() {
        let verdict = admit(sdk::Admission {
            hold: vec![sdk::BalanceAmount::new("default", -1)],
            ..sdk::Admission::default()
        });
        assert_eq!(verdict.unwrap_err().code(), "policy_invalid_verdict");
    }

    #[test]
    fn overflowing_charges_break_the_contract() {
        let verdict = admit(sdk::Admission {
            charge: vec![
                sdk::BalanceAmount::new("default", i64::MAX),
                sdk::BalanceAmount::new("default", 1),
            ],
            ..sdk::Admission::default()
        });
        assert!(matches!(verdict, Err(MeterError::PolicyInvalidVerdict(_))));
    }

    #[test]
    fn admitting_more_items_than_the_batch_breaks_the_contract() {
        let verdict = admit(sdk::Admission {
            admitted_items: 3,
            ..sdk::Admission::default()
        });
        assert!(matches!(verdict, Err(MeterError::PolicyInvalidVerdict(_))));
    }

    #[test]
    fn a_charge_on_an_undescribed_balance_breaks_the_contract() {
        let settlement = sdk::Settlement {
            charge: vec![sdk::BalanceAmount::new("other", 1)],
            ..sdk::Settlement::default()
        };
        assert!(check_settlement(&info(), settlement).is_err());
    }

    #[test]
    fn meta_must_be_a_json_object() {
        let verdict = admit(sdk::Admission {
            meta_json: "[1]".to_owned(),
            ..sdk::Admission::default()
        });
        assert!(matches!(verdict, Err(MeterError::PolicyInvalidVerdict(_))));
    }

    #[test]
    fn a_reject_with_a_success_status_breaks_the_contract() {
        let verdict = check_verdict(&info(), 0, sdk::Verdict::reject(200, "ok", "fine"));
        assert!(verdict.is_err());
    }

    #[test]
    fn contract_versions_parse_from_what_they_print_and_no_other_parses() {
        for version in ContractVersion::IMPLEMENTED {
            assert_eq!(ContractVersion::parse(&version.to_string()), Some(version));
        }
        for other in ["0.3.0", "0.1", "", "1.0.0"] {
            assert_eq!(ContractVersion::parse(other), None, "{other}");
        }
        assert_eq!(
            ContractVersion::implemented(),
            "creditgate:policy@0.1.0 and creditgate:policy@0.2.0"
        );
    }
}
