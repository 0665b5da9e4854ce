//! The decisions of record formats 3 to 7, frozen: format 8 added the outcome (its
//! attributes and body) to each settle, which changes the layout postcard reads.
//! Records written before read through these types and become today's: a settle of
//! theirs has no recorded outcome. Only the settle differs; every other decision reads
//! through today's type, so a change of any of them must freeze it here too. Never
//! change these types.

use serde::Deserialize;

use super::super::record::{
    self, Activation, Authorized, CapSet, Decision, EventRecord, Expired, Granted, Imported,
    LotClosed, MarkRecord, OverdraftSet, PolicyRecord, PostingRecord, ReceiptRecord, RefillSet,
    Spent, WatchSet,
};
use super::super::scheduled::ScheduledGrant;

#[derive(Deserialize)]
pub(super) enum DecisionV7 {
    Authorize(Authorized),
    Settle(SettledV7),
    Expire(Expired),
    Grant(Granted),
    Policy(PolicyRecord),
    Activate(Activation),
    Import(Imported),
    CloseLot(LotClosed),
    Overdraft(OverdraftSet),
    Cap(CapSet),
    Spend(Spent),
    Refill(RefillSet),
    Watch(WatchSet),
    Event(EventRecord),
    Schedule(ScheduledGrant),
}

#[derive(Deserialize)]
pub(super) struct SettledV7 {
    id: String,
    tenant: String,
    policy: u32,
    status: u16,
    answer: ReceiptRecord,
    posting: PostingRecord,
    marks: Vec<MarkRecord>,
}

impl From<DecisionV7> for Decision {
    fn from(decision: DecisionV7) -> Self {
        match decision {
            DecisionV7::Authorize(authorized) => Decision::Authorize(authorized),
            DecisionV7::Settle(old) => Decision::Settle(record::Settled {
                id: old.id,
                tenant: old.tenant,
                policy: old.policy,
                status: old.status,
                answer: old.answer,
                posting: old.posting,
                marks: old.marks,
                outcome: None,
            }),
            DecisionV7::Expire(expired) => Decision::Expire(expired),
            DecisionV7::Grant(granted) => Decision::Grant(granted),
            DecisionV7::Policy(saved) => Decision::Policy(saved),
            DecisionV7::Activate(activation) => Decision::Activate(activation),
            DecisionV7::Import(imported) => Decision::Import(imported),
            DecisionV7::CloseLot(closed) => Decision::CloseLot(closed),
            DecisionV7::Overdraft(set) => Decision::Overdraft(set),
            DecisionV7::Cap(set) => Decision::Cap(set),
            DecisionV7::Spend(spent) => Decision::Spend(spent),
            DecisionV7::Refill(set) => Decision::Refill(set),
            DecisionV7::Watch(set) => Decision::Watch(set),
            DecisionV7::Event(event) => Decision::Event(event),
            DecisionV7::Schedule(grant) => Decision::Schedule(grant),
        }
    }
}

#[cfg(test)]
pub(super) mod written {
    //! The settle as a build of formats 3 to 7 wrote it, for the test that reads one.
    use serde::Serialize;

    use super::*;

    /// The variant before `Settle` only keeps its index.
    #[derive(Serialize)]
    #[allow(dead_code, clippy::large_enum_variant)]
    pub enum Decision7 {
        Authorize(()),
        Settle(Settled7),
    }

    #[derive(Serialize)]
    pub struct Settled7 {
        pub id: String,
        pub tenant: String,
        pub policy: u32,
        pub status: u16,
        pub answer: ReceiptRecord,
        pub posting: PostingRecord,
        pub marks: Vec<MarkRecord>,
    }
}
