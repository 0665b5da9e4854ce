//! The ledger's rules against a reference model, on random sequences: grants,
//! authorizes, settles (captures, releases, charges past the hold), expiries and
//! restarts, through the real meter on a SQLite scratch ledger. After every step each
//! tenant's available and held credits equal the model's and are never negative; after
//! every restart and at the end, every journal sums to its balances. proptest shrinks a
//! failing sequence to a minimal one.
//!
//! The policy is `charges_on_429`: SMARTe's authorize (hold one credit per item, at
//! least one; refuse with 402 when the balance is short) and settle (charge the records
//! delivered, at most those requested), except that a 429 charges whatever `records`
//! says: a settle that asks for more than the hold, which the host must capture, then
//! charge from the balance as far as it goes, and report the rest as uncollected.

use creditgate::model::{AuthorizeRequest, GrantRequest, SettleRequest};
use proptest::prelude::*;

use crate::support::{TestMeter, pairs};

const POLICY: &str = "charges_on_429";
const TENANTS: [&str; 2] = ["t0", "t1"];
const HOLD_TTL_MS: u64 = 5 * 60 * 1000;

#[derive(Debug, Clone)]
enum Step {
    Grant {
        tenant: usize,
        amount: i64,
    },
    /// `items` requested: the hold is `max(items, 1)` credits.
    Authorize {
        tenant: usize,
        items: usize,
    },
    /// Settles the `pick`-th transaction authorized so far (modulo their count).
    Settle {
        pick: usize,
        status: u16,
        records: i64,
    },
    /// Moves the clock and releases the holds that lapsed.
    Advance {
        ms: u64,
    },
    /// Closes the meter and opens the same ledger again.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..TENANTS.len(), 1..40i64).prop_map(|(tenant, amount)| Step::Grant { tenant, amount }),
        4 => (0..TENANTS.len(), 0..8usize).prop_map(|(tenant, items)| Step::Authorize { tenant, items }),
        4 => (any::<usize>(), prop::sample::select(vec![200u16, 429, 500]), 0..12i64)
            .prop_map(|(pick, status, records)| Step::Settle { pick, status, records }),
        1 => prop_oneof![Just(1_000u64), Just(HOLD_TTL_MS - 1), Just(HOLD_TTL_MS), 0..2 * HOLD_TTL_MS]
            .prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::Restart),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open { expires_at_ms: u64 },
    Closed,
}

#[derive(Debug)]
struct Transaction {
    id: String,
    tenant: usize,
    requested: i64,
    held: i64,
    state: State,
}

/// The reference: one balance per tenant, the host's rules written out plainly.
#[derive(Debug, Default)]
struct Model {
    available: [i64; 2],
    held: [i64; 2],
    transactions: Vec<Transaction>,
    now_ms: u64,
}

impl Model {
    fn authorize(&mut self, id: String, tenant: usize, items: usize) {
        let required = items.max(1) as i64;
        if self.available[tenant] < required {
            // Refused (402): the answer is recorded, nothing moves; it never settles.
            self.transactions.push(Transaction {
                id,
                tenant,
                requested: required,
                held: 0,
                state: State::Closed,
            });
            return;
        }
        self.available[tenant] -= required;
        self.held[tenant] += required;
        self.transactions.push(Transaction {
            id,
            tenant,
            requested: required,
            held: required,
            state: State::Open {
                expires_at_ms: self.now_ms + HOLD_TTL_MS,
            },
        });
    }

    /// Capture from the hold, release the rest, charge any excess from what is
    /// available as far as it goes. A closed transaction moves nothing.
    fn settle(&mut self, index: usize, status: u16, records: i64) {
        let transaction = &mut self.transactions[index];
        if !matches!(transaction.state, State::Open { .. }) {
            return;
        }
        let asked = match status {
            200 => records.min(transaction.requested),
            429 => records,
            _ => 0,
        };
        let tenant = transaction.tenant;
        let captured = asked.min(transaction.held);
        let direct = (asked - captured).min(self.available[tenant]);
        self.held[tenant] -= transaction.held;
        self.available[tenant] += transaction.held - captured - direct;
        transaction.held = 0;
        transaction.state = State::Closed;
    }

    /// Every hold whose TTL has passed (at or before now) goes back to available.
    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for transaction in &mut self.transactions {
            if let State::Open { expires_at_ms } = transaction.state
                && expires_at_ms <= self.now_ms
            {
                self.held[transaction.tenant] -= transaction.held;
                self.available[transaction.tenant] += transaction.held;
                transaction.held = 0;
                transaction.state = State::Closed;
            }
        }
    }
}

fn check_balances(meter: &TestMeter, model: &Model, after: &str) -> Result<(), TestCaseError> {
    for (index, tenant) in TENANTS.iter().enumerate() {
        let balances = meter.meter.balances(tenant).expect("balances");
        let available = balances.balances.get("default").copied().unwrap_or(0);
        let held = balances.held.get("default").copied().unwrap_or(0);
        prop_assert!(
            available >= 0 && held >= 0,
            "{tenant} below zero after {after}: {available} available, {held} held"
        );
        prop_assert_eq!(
            (available, held),
            (model.available[index], model.held[index]),
            "{} (available, held) after {} differs from the model",
            tenant,
            after
        );
    }
    Ok(())
}

fn check_journal(meter: &TestMeter, after: &str) -> Result<(), TestCaseError> {
    let violations = meter.meter.invariant_violations().expect("invariant check");
    prop_assert!(
        violations.is_empty(),
        "the journal does not sum to the balances after {after}: {violations:?}"
    );
    Ok(())
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut meter = Some(TestMeter::new(POLICY));
    let mut model = Model {
        now_ms: crate::support::START_MS,
        ..Model::default()
    };
    let mut grants = 0usize;
    for (number, step) in steps.iter().enumerate() {
        let gate = meter.as_ref().expect("a meter between steps");
        let after = format!("step {number} ({step:?})");
        match *step {
            Step::Grant { tenant, amount } => {
                grants += 1;
                gate.meter
                    .grant(GrantRequest {
                        grant_id: format!("g{grants}"),
                        tenant: TENANTS[tenant].to_owned(),
                        balance: "default".to_owned(),
                        amount,
                        terms: Default::default(),
                    })
                    .expect("grant");
                model.available[tenant] += amount;
            }
            Step::Authorize { tenant, items } => {
                let id = format!("a{number}");
                let answer = gate
                    .meter
                    .authorize(AuthorizeRequest {
                        transaction_id: Some(id.clone()),
                        tenant: TENANTS[tenant].to_owned(),
                        operation: "person.enrich".to_owned(),
                        items: (0..items).map(|item| format!("i{item}")).collect(),
                        ..AuthorizeRequest::default()
                    })
                    .expect("authorize answers");
                model.authorize(id, tenant, items);
                let expected = matches!(
                    model.transactions.last().map(|t| t.state),
                    Some(State::Open { .. })
                );
                prop_assert_eq!(answer.admitted, expected, "admission at {}", after);
            }
            Step::Settle {
                pick,
                status,
                records,
            } => {
                if model.transactions.is_empty() {
                    continue;
                }
                let index = pick % model.transactions.len();
                // A closed transaction answers its receipt again or an error; either
                // way nothing moves, which the balances check below proves.
                let _ = gate.meter.settle(SettleRequest {
                    transaction_id: model.transactions[index].id.clone(),
                    status,
                    attributes: pairs(&[("records", &records.to_string())]),
                    body: None,
                });
                model.settle(index, status, records);
            }
            Step::Advance { ms } => {
                gate.clock.advance_ms(ms);
                gate.meter.expire_due().expect("expire_due");
                model.advance(ms);
            }
            Step::Restart => {
                let reopened = meter.take().expect("a meter").reopen(POLICY);
                check_journal(&reopened, &after)?;
                meter = Some(reopened);
            }
        }
        check_balances(meter.as_ref().expect("a meter"), &model, &after)?;
    }
    check_journal(meter.as_ref().expect("a meter"), "the last step")
}

proptest! {
    // 32 sequences of up to 40 steps: ~the brief's budget in a release build.
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_keeps_balances_equal_to_the_model_and_never_below_zero(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        run(&steps)?;
    }
}
