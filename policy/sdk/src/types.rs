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
