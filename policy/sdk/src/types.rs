//! Plain Rust mirrors of the records in `wit/policy.wit`; see there for each field.

/// A number of credits on one named balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceAmount {
    pub balance: String,
    pub amount: i64,
}

impl BalanceAmount {
    pub fn new(balance: impl Into<String>, amount: i64) -> Self {
        Self {
            balance: balance.into(),
            amount,
        }
    }
}

/// The amount on `balance` in `amounts`, zero when absent.
pub fn amount_of(amounts: &[BalanceAmount], balance: &str) -> i64 {
    amounts
        .iter()
        .filter(|entry| entry.balance == balance)
        .map(|entry| entry.amount)
        .sum()
}

/// One balance as the policy sees it at a decision: what is available, how far the
/// host lets it go below zero, and the operator's spend cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceState {
    pub balance: String,
    /// Negative when the account is overdrawn.
    pub available: i64,
    /// `>= 0`; 0 = no overdraft.
    pub overdraft_limit: i64,
    pub spend_cap: Option<SpendWindow>,
}

/// A spend cap's current window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendWindow {
    pub cap: i64,
    pub spent: i64,
    pub resets_at_ms: i64,
}

impl BalanceState {
    /// A balance with `available` credits, no overdraft and no spend cap.
    pub fn new(balance: impl Into<String>, available: i64) -> Self {
        Self {
            balance: balance.into(),
            available,
            overdraft_limit: 0,
            spend_cap: None,
        }
    }

    /// What can still be spent: `available + overdraft_limit`, no more than the spend
    /// cap leaves (`cap - spent`), never negative. Saturating: extreme figures never
    /// overflow.
    pub fn spendable(&self) -> i64 {
        let within_overdraft = self.available.saturating_add(self.overdraft_limit);
        let within_cap = match &self.spend_cap {
            Some(window) => within_overdraft.min(window.cap.saturating_sub(window.spent)),
            None => within_overdraft,
        };
        within_cap.max(0)
    }
}

/// The state of `balance` in `balances`, if listed.
pub fn balance_state<'a>(balances: &'a [BalanceState], balance: &str) -> Option<&'a BalanceState> {
    balances.iter().find(|state| state.balance == balance)
}

/// What can still be spent on `balance` ([`BalanceState::spendable`]), zero when absent.
pub fn spendable_of(balances: &[BalanceState], balance: &str) -> i64 {
    balance_state(balances, balance).map_or(0, BalanceState::spendable)
}

/// "The tenant has had `key` under `scope`": lets a policy charge once per unique item.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub scope: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub balances: Vec<String>,
    pub hold_ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub transaction_id: String,
    pub tenant: String,
    pub operation: String,
    pub items: Vec<String>,
    pub attributes: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// The value of attribute `name`, if the request carries it.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        find_pair(&self.attributes, name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    pub status: Option<u16>,
    pub admitted_items: u32,
    pub hold: Vec<BalanceAmount>,
    pub charge: Vec<BalanceAmount>,
    pub marks: Vec<Mark>,
    pub headers: Vec<(String, String)>,
    pub meta_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Reject(Rejection),
    Admit(Admission),
}

impl Verdict {
    pub fn reject(status: u16, code: &str, message: impl Into<String>) -> Self {
        Verdict::Reject(Rejection {
            status,
            code: code.to_owned(),
            message: message.into(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admitted {
    pub request: Request,
    pub admitted_items: u32,
    pub held: Vec<BalanceAmount>,
    pub charged: Vec<BalanceAmount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub status: u16,
    pub attributes: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Outcome {
    /// The value of attribute `name`, if the outcome carries it.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        find_pair(&self.attributes, name)
    }

    /// Whether the upstream work succeeded (a 2xx status).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settlement {
    pub charge: Vec<BalanceAmount>,
    pub marks: Vec<Mark>,
    pub headers: Vec<(String, String)>,
    pub meta_json: String,
}

fn find_pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(available: i64, overdraft_limit: i64, cap: Option<(i64, i64)>) -> BalanceState {
        BalanceState {
            balance: "default".to_owned(),
            available,
            overdraft_limit,
            spend_cap: cap.map(|(cap, spent)| SpendWindow {
                cap,
                spent,
                resets_at_ms: 1_000,
            }),
        }
    }

    #[test]
    fn spendable_is_what_is_available_without_overdraft_or_cap() {
        assert_eq!(state(7, 0, None).spendable(), 7);
        assert_eq!(state(0, 0, None).spendable(), 0);
    }

    #[test]
    fn an_overdraft_adds_to_what_is_spendable_and_an_overdrawn_balance_spends_the_rest() {
        assert_eq!(state(7, 5, None).spendable(), 12);
        assert_eq!(state(-3, 5, None).spendable(), 2);
        assert_eq!(state(-5, 5, None).spendable(), 0);
    }

    #[test]
    fn a_spend_cap_bounds_what_is_spendable_by_what_its_window_has_left() {
        assert_eq!(state(100, 0, Some((10, 4))).spendable(), 6);
        assert_eq!(state(3, 0, Some((10, 4))).spendable(), 3);
        assert_eq!(state(100, 50, Some((10, 10))).spendable(), 0);
    }

    #[test]
    fn spendable_is_never_negative() {
        assert_eq!(state(-9, 5, None).spendable(), 0);
        assert_eq!(state(-9, 0, None).spendable(), 0);
        assert_eq!(state(100, 0, Some((10, 25))).spendable(), 0);
        assert_eq!(
            state(i64::MIN, 0, Some((i64::MIN, i64::MAX))).spendable(),
            0
        );
    }

    #[test]
    fn spendable_saturates_instead_of_overflowing() {
        assert_eq!(state(i64::MAX, i64::MAX, None).spendable(), i64::MAX);
        assert_eq!(
            state(i64::MAX, i64::MAX, Some((i64::MAX, -1))).spendable(),
            i64::MAX
        );
    }

    #[test]
    fn spendable_of_reads_the_named_balance_and_is_zero_when_absent() {
        let balances = [
            BalanceState::new("enhancement", 3),
            BalanceState {
                overdraft_limit: 2,
                ..BalanceState::new("export", -1)
            },
        ];
        assert_eq!(spendable_of(&balances, "enhancement"), 3);
        assert_eq!(spendable_of(&balances, "export"), 1);
        assert_eq!(spendable_of(&balances, "other"), 0);
        assert_eq!(
            balance_state(&balances, "export").map(|state| state.available),
            Some(-1)
        );
        assert_eq!(balance_state(&balances, "other"), None);
    }
}
