//! The workload every row runs: one gateway selling both reference products. Each
//! transaction picks a product, a tenant and an operation of that product, with as many
//! items as the seeds' requests carry, and is settled with a 200 outcome.

use creditgate::NativePolicy;
use creditgate::model::{AuthorizeRequest, SettleRequest};
use creditgate_policy_sdk::{self as sdk, BalanceAmount, BalanceState, Ledger, Policy, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Smarte,
    DonorAtlas,
}

impl Product {
    pub const ALL: [Product; 2] = [Product::Smarte, Product::DonorAtlas];

    pub fn index(self) -> usize {
        match self {
            Product::Smarte => 0,
            Product::DonorAtlas => 1,
        }
    }

    /// The operations the workload calls.
    pub fn operations(self) -> &'static [&'static str] {
        match self {
            Product::Smarte => &smarte::OPERATIONS,
            Product::DonorAtlas => &["enhance", "export", "search"],
        }
    }

    /// The product's reference rules, linked natively.
    pub fn native(self) -> NativePolicy {
        match self {
            Product::Smarte => NativePolicy::of::<smarte::Smarte>("smarte"),
            Product::DonorAtlas => NativePolicy::of::<donoratlas::DonorAtlas>("donoratlas"),
        }
    }
}

/// One authorize + settle, as a gateway would send them.
pub struct Transaction {
    pub product: Product,
    pub authorize: AuthorizeRequest,
    pub settle: SettleRequest,
    /// What the baselines hold and then charge; priced when generated, outside the
    /// timed calls, and only for the baselines.
    pub baseline: Option<BaselineAmounts>,
}

/// Credits summed over balances: the baselines keep one counter per tenant and product.
#[derive(Debug, Clone, Copy)]
pub struct BaselineAmounts {
    pub hold: i64,
    pub charge: i64,
}

impl Transaction {
    /// What the rules hold at authorize and finally charge (no unique-item marks).
    fn baseline_amounts(&self) -> BaselineAmounts {
        let request = sdk::Request {
            transaction_id: self.settle.transaction_id.clone(),
            tenant: self.authorize.tenant.clone(),
            operation: self.authorize.operation.clone(),
            items: self.authorize.items.clone(),
            attributes: Vec::new(),
            body: None,
        };
        let outcome = sdk::Outcome {
            status: self.settle.status,
            attributes: self
                .settle
                .attributes
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            body: None,
        };
        match self.product {
            Product::Smarte => amounts::<smarte::Smarte>(request, &outcome),
            Product::DonorAtlas => amounts::<donoratlas::DonorAtlas>(request, &outcome),
        }
    }
}

/// A ledger where nothing was ever marked: the baselines keep no marks.
struct NothingMarked;

impl Ledger for NothingMarked {
    fn marked(&self, _scope: &str, keys: &[String]) -> Vec<bool> {
        vec![false; keys.len()]
    }
}

fn amounts<P: Policy>(request: sdk::Request, outcome: &sdk::Outcome) -> BaselineAmounts {
    let balances: Vec<BalanceState> = P::describe()
        .balances
        .into_iter()
        .map(|balance| BalanceState::new(balance, i64::MAX / 4))
        .collect();
    let Verdict::Admit(admission) = P::authorize(&request, &balances, &NothingMarked) else {
        return BaselineAmounts { hold: 0, charge: 0 };
    };
    let sum = |amounts: &[BalanceAmount]| amounts.iter().map(|amount| amount.amount).sum::<i64>();
    let held = sum(&admission.hold);
    let charged_now = sum(&admission.charge);
    let admitted = sdk::Admitted {
        request,
        admitted_items: admission.admitted_items,
        held: admission.hold,
        charged: admission.charge,
    };
    let settled = sum(&P::settle(&admitted, outcome, &balances, &NothingMarked).charge);
    BaselineAmounts {
        hold: held + charged_now,
        charge: charged_now + settled.min(held),
    }
}

/// A small deterministic generator (xorshift64*): reproducible workloads, no dependency.
pub struct Generator {
    state: u64,
    client: usize,
    tenants: usize,
    sequence: u64,
    /// Distinguishes the repetitions of a row: ids never repeat within one ledger.
    run: usize,
    /// Whether transactions carry [`BaselineAmounts`].
    priced: bool,
}

impl Generator {
    pub fn new(client: usize, tenants: usize, run: usize, priced: bool) -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15
                ^ ((client as u64 + 1) << 20 | run as u64).wrapping_mul(0x1000_0000_01b3),
            client,
            tenants,
            sequence: 0,
            run,
            priced,
        }
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }

    pub fn next_transaction(&mut self) -> Transaction {
        self.sequence += 1;
        let sequence = self.sequence;
        let product = Product::ALL[self.below(2) as usize];
        let tenant = tenant_name(self.below(self.tenants as u64) as usize);
        let transaction_id = format!("r{}-c{}-{sequence}", self.run, self.client);
        // Items per request as in the seeds: SMARTe enriches 1 to 3 records a call;
        // DonorAtlas enhances 1 to 5 people, exports 1 to 3 donors, searches for free.
        let (operation, items, records) = match product {
            Product::Smarte => {
                let count = 1 + self.below(3);
                let operation =
                    smarte::OPERATIONS[self.below(smarte::OPERATIONS.len() as u64) as usize];
                let items = (0..count)
                    .map(|item| format!("record-{sequence}-{item}"))
                    .collect();
                (operation, items, count)
            }
            Product::DonorAtlas => match self.below(10) {
                0..=4 => {
                    let persons = (0..1 + self.below(5))
                        .map(|person| format!("person-{person}"))
                        .collect();
                    ("enhance", persons, 0)
                }
                5..=7 => {
                    let donors = (0..1 + self.below(3))
                        .map(|_| format!("donor-{}", self.below(10_000)))
                        .collect();
                    ("export", donors, 0)
                }
                _ => ("search", Vec::new(), 0),
            },
        };
        let mut transaction = Transaction {
            product,
            baseline: None,
            authorize: AuthorizeRequest {
                transaction_id: Some(transaction_id.clone()),
                tenant,
                operation: operation.to_owned(),
                items,
                ..AuthorizeRequest::default()
            },
            settle: SettleRequest {
                transaction_id,
                status: 200,
                attributes: [("records".to_owned(), records.to_string())].into(),
                body: None,
            },
        };
        if self.priced {
            transaction.baseline = Some(transaction.baseline_amounts());
        }
        transaction
    }
}

/// A transaction of one item on an operation the product meters, shaped as
/// [`Generator::next_transaction`] shapes them: SMARTe enriches one person (one record
/// delivered, told by the settle's `records` attribute), DonorAtlas enhances one person.
/// `item` names the item, so that each call can be a new one.
pub fn single_item(
    product: Product,
    tenant: String,
    transaction_id: String,
    item: usize,
) -> Transaction {
    let (operation, item, records) = match product {
        Product::Smarte => ("person.enrich", format!("record-{item}"), 1),
        Product::DonorAtlas => ("enhance", format!("person-{item}"), 0),
    };
    Transaction {
        product,
        baseline: None,
        authorize: AuthorizeRequest {
            transaction_id: Some(transaction_id.clone()),
            tenant,
            operation: operation.to_owned(),
            items: vec![item],
            ..AuthorizeRequest::default()
        },
        settle: SettleRequest {
            transaction_id,
            status: 200,
            attributes: [("records".to_owned(), records.to_string())].into(),
            body: None,
        },
    }
}

pub fn tenant_name(index: usize) -> String {
    format!("tenant-{index}")
}
