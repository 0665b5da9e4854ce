//! Shared test helpers: locating the built components and driving a meter.

use std::collections::BTreeMap;
use std::path::PathBuf;

use creditgate::clock::ManualClock;
use creditgate::model::{Authorization, AuthorizeRequest, GrantRequest, Receipt, SettleRequest};
use creditgate::{Meter, MeterConfig, MeterError, PolicySource};

/// The workspace's target directory (honouring CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The bytes of a policy component built by `cargo policies`.
pub fn component(name: &str) -> Vec<u8> {
    let path = target_dir().join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {}: {error}; build the policy components first with `cargo policies`",
            path.display()
        )
    })
}

pub fn component_path(name: &str) -> PathBuf {
    target_dir().join(format!("wasm32-wasip2/release/{name}.wasm"))
}

/// A meter on a fresh ledger file with a hand-driven clock.
pub struct TestMeter {
    pub meter: Meter,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

pub const START_MS: u64 = 1_700_000_000_000;

impl TestMeter {
    pub fn new(policy: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::starting_at(START_MS);
        let meter = open_meter(&dir, &clock, policy);
        Self { meter, clock, dir }
    }

    /// Closes the meter and opens the same ledger file again, with `policy`.
    pub fn reopen(self, policy: &str) -> Self {
        let Self { meter, clock, dir } = self;
        drop(meter);
        let meter = open_meter(&dir, &clock, policy);
        Self { meter, clock, dir }
    }

    pub fn grant(&self, tenant: &str, balance: &str, amount: i64) {
        self.meter
            .grant(GrantRequest {
                grant_id: format!("grant-{tenant}-{balance}-{amount}-{}", uuid()),
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                amount,
            })
            .expect("grant");
    }

    pub fn try_authorize(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
        attributes: &[(&str, &str)],
    ) -> Result<Authorization, MeterError> {
        self.meter.authorize(AuthorizeRequest {
            transaction_id: Some(id.to_owned()),
            tenant: tenant.to_owned(),
            operation: operation.to_owned(),
            items: items.iter().map(|item| (*item).to_owned()).collect(),
            attributes: pairs(attributes),
            body: None,
        })
    }

    pub fn authorize(
        &self,
        id: &str,
        tenant: &str,
        operation: &str,
        items: &[&str],
        attributes: &[(&str, &str)],
    ) -> Authorization {
        self.try_authorize(id, tenant, operation, items, attributes)
            .expect("authorize")
    }

    pub fn try_settle(
        &self,
        id: &str,
        status: u16,
        attributes: &[(&str, &str)],
    ) -> Result<Receipt, MeterError> {
        self.meter.settle(SettleRequest {
            transaction_id: id.to_owned(),
            status,
            attributes: pairs(attributes),
            body: None,
        })
    }

    pub fn settle(&self, id: &str, status: u16, attributes: &[(&str, &str)]) -> Receipt {
        self.try_settle(id, status, attributes).expect("settle")
    }

    pub fn available(&self, tenant: &str, balance: &str) -> i64 {
        self.meter.balances(tenant).expect("balances").balances[balance]
    }

    pub fn held(&self, tenant: &str, balance: &str) -> i64 {
        self.meter.balances(tenant).expect("balances").held[balance]
    }

    /// Every account equals the sum of its journal entries.
    pub fn assert_sound(&self) {
        let violations = self.meter.invariant_violations().expect("invariant check");
        assert!(
            violations.is_empty(),
            "ledger invariants broke: {violations:#?}"
        );
    }
}

fn open_meter(dir: &tempfile::TempDir, clock: &ManualClock, policy: &str) -> Meter {
    let mut config = MeterConfig::new(dir.path().join("ledger.db"));
    config.clock = std::sync::Arc::new(clock.clone());
    config.sweep_interval_ms = 0;
    Meter::open(config, PolicySource::Component(component(policy))).expect("open meter")
}

pub fn pairs(attributes: &[(&str, &str)]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

pub fn amounts(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
    entries
        .iter()
        .map(|(balance, amount)| ((*balance).to_owned(), *amount))
        .collect()
}

pub fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}
