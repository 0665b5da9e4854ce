//! The DonorAtlas rules, apart from the component export so that test fixtures can
//! compile them into deliberately broken variants (see `tests/fixtures`).

use std::collections::BTreeSet;

use creditgate_policy_sdk::{
    Admission, Admitted, BalanceAmount, BalanceState, Description, JsonObject, Ledger, Mark,
    Outcome, Policy, Request, Settlement, Verdict, spendable_of,
};

pub const ENHANCEMENT: &str = "enhancement";
pub const EXPORT: &str = "export";
/// The mark scope recording which donors a tenant has exported.
pub const EXPORTED_SCOPE: &str = "exported";
/// Credits per enhanced person and per newly exported donor.
pub const CREDITS_PER_PERSON: i64 = 1;
pub const CREDITS_PER_NEW_DONOR: i64 = 1;
/// This policy holds nothing (it charges at authorize); the TTL bounds an open
/// transaction's wait for its settle all the same.
pub const HOLD_TTL_MS: u64 = 15 * 60 * 1000;

pub struct DonorAtlas;

fn is_free(operation: &str) -> bool {
    operation == "search"
        || operation == "profile.get"
        || operation.starts_with("network.")
        || operation.starts_with("list.")
}

fn count(items: usize) -> i64 {
    i64::try_from(items).unwrap_or(i64::MAX)
}

fn empty_batch(what: &str) -> Verdict {
    Verdict::reject(400, "empty_batch", format!("No {what} submitted."))
}

fn enhance(request: &Request, balances: &[BalanceState]) -> Verdict {
    let requested = count(request.items.len());
    if requested == 0 {
        return empty_batch("persons");
    }
    // What the tenant may spend: its credits, its overdraft, within its spend cap.
    let credits = spendable_of(balances, ENHANCEMENT);
    let affordable = credits / CREDITS_PER_PERSON;
    if affordable <= 0 {
        return Verdict::reject(402, "payment_required", "No enhancement credits remaining.");
    }
    let processed = requested.min(affordable);
    let charged = processed * CREDITS_PER_PERSON;
    let partial = processed < requested;
    let mut meta = JsonObject::new()
        .int("requested", requested)
        .int("processed", processed)
        .int("imports_charged", charged)
        .int("imports_remaining", credits - charged)
        .bool("partial", partial);
    if partial {
        meta = meta.str(
            "partial_reason",
            &format!("Only {credits} credits remaining, but {requested} persons requested"),
        );
    }
    Verdict::Admit(Admission {
        status: Some(202),
        admitted_items: u32::try_from(processed).unwrap_or(u32::MAX),
        charge: vec![BalanceAmount::new(ENHANCEMENT, charged)],
        meta_json: meta.finish(),
        ..Admission::default()
    })
}

fn export(request: &Request, balances: &[BalanceState], ledger: &dyn Ledger) -> Verdict {
    if request.items.is_empty() {
        return empty_batch("donors");
    }
    let mut seen = BTreeSet::new();
    let unique: Vec<String> = request
        .items
        .iter()
        .filter(|donor| seen.insert(donor.as_str()))
        .cloned()
        .collect();
    let already_exported = ledger.marked(EXPORTED_SCOPE, &unique);
    let new_donors: Vec<String> = unique
        .into_iter()
        .zip(already_exported)
        .filter(|(_, exported)| !exported)
        .map(|(donor, _)| donor)
        .collect();
    let credits_used = count(new_donors.len()) * CREDITS_PER_NEW_DONOR;
    let credits = spendable_of(balances, EXPORT);
    if credits_used > credits {
        return Verdict::reject(
            402,
            "payment_required",
            format!("Not enough export credits: {credits_used} needed, {credits} remaining."),
        );
    }
    let charge = if credits_used > 0 {
        vec![BalanceAmount::new(EXPORT, credits_used)]
    } else {
        Vec::new()
    };
    Verdict::Admit(Admission {
        admitted_items: u32::try_from(request.items.len()).unwrap_or(u32::MAX),
        charge,
        marks: new_donors
            .into_iter()
            .map(|key| Mark {
                scope: EXPORTED_SCOPE.to_owned(),
                key,
            })
            .collect(),
        meta_json: JsonObject::new()
            .int("credits_used", credits_used)
            .int("exports_remaining", credits - credits_used)
            .finish(),
        ..Admission::default()
    })
}

impl Policy for DonorAtlas {
    fn describe() -> Description {
        Description {
            name: "donoratlas".to_owned(),
            version: "1.0.0".to_owned(),
            balances: vec![ENHANCEMENT.to_owned(), EXPORT.to_owned()],
            hold_ttl_ms: HOLD_TTL_MS,
        }
    }

    fn authorize(request: &Request, balances: &[BalanceState], ledger: &dyn Ledger) -> Verdict {
        match request.operation.as_str() {
            "enhance" => enhance(request, balances),
            "export" => export(request, balances, ledger),
            free if is_free(free) => Verdict::Admit(Admission {
                admitted_items: u32::try_from(request.items.len()).unwrap_or(u32::MAX),
                meta_json: "{}".to_owned(),
                ..Admission::default()
            }),
            unknown => Verdict::reject(
                400,
                "unknown_operation",
                format!("Operation '{unknown}' is not part of the partners API."),
            ),
        }
    }

    /// Everything was charged at authorize: settle moves nothing.
    fn settle(
        _admitted: &Admitted,
        _outcome: &Outcome,
        _balances: &[BalanceState],
        _ledger: &dyn Ledger,
    ) -> Settlement {
        Settlement {
            meta_json: "{}".to_owned(),
            ..Settlement::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Marks(RefCell<BTreeSet<String>>);
    impl Ledger for Marks {
        fn marked(&self, scope: &str, keys: &[String]) -> Vec<bool> {
            assert_eq!(scope, EXPORTED_SCOPE);
            keys.iter()
                .map(|key| self.0.borrow().contains(key))
                .collect()
        }
    }
    impl Marks {
        fn record(&self, admission: &Admission) {
            for mark in &admission.marks {
                self.0.borrow_mut().insert(mark.key.clone());
            }
        }
    }

    fn request(operation: &str, items: &[&str]) -> Request {
        Request {
            transaction_id: "t-1".to_owned(),
            tenant: "acme".to_owned(),
            operation: operation.to_owned(),
            items: items.iter().map(|item| (*item).to_owned()).collect(),
            ..Request::default()
        }
    }

    fn balances(enhancement: i64, export: i64) -> Vec<BalanceState> {
        vec![
            BalanceState::new(ENHANCEMENT, enhancement),
            BalanceState::new(EXPORT, export),
        ]
    }

    fn admit(verdict: Verdict) -> Admission {
        match verdict {
            Verdict::Admit(admission) => admission,
            Verdict::Reject(rejection) => unreachable!("expected admit, got {rejection:?}"),
        }
    }

    fn reject(verdict: Verdict) -> (u16, String) {
        match verdict {
            Verdict::Reject(rejection) => (rejection.status, rejection.code),
            Verdict::Admit(admission) => unreachable!("expected reject, got {admission:?}"),
        }
    }

    #[test]
    fn enhancement_charges_one_credit_per_person_at_acceptance() {
        let admitted = admit(DonorAtlas::authorize(
            &request("enhance", &["a", "b"]),
            &balances(5, 0),
            &Marks::default(),
        ));
        assert_eq!(admitted.charge, vec![BalanceAmount::new(ENHANCEMENT, 2)]);
        assert_eq!(admitted.status, Some(202));
        assert_eq!(
            admitted.meta_json,
            r#"{"requested":2,"processed":2,"imports_charged":2,"imports_remaining":3,"partial":false}"#
        );
    }

    #[test]
    fn a_batch_larger_than_the_balance_admits_the_first_n_as_partial() {
        let persons = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"];
        let admitted = admit(DonorAtlas::authorize(
            &request("enhance", &persons),
            &balances(3, 0),
            &Marks::default(),
        ));
        assert_eq!(admitted.admitted_items, 3);
        assert_eq!(admitted.charge, vec![BalanceAmount::new(ENHANCEMENT, 3)]);
        assert_eq!(
            admitted.meta_json,
            r#"{"requested":10,"processed":3,"imports_charged":3,"imports_remaining":0,"partial":true,"partial_reason":"Only 3 credits remaining, but 10 persons requested"}"#
        );
    }

    #[test]
    fn an_overdraft_counts_as_credits_remaining() {
        let overdrawn = |balance: &str| BalanceState {
            overdraft_limit: 4,
            ..BalanceState::new(balance, -2)
        };
        let persons = ["p0", "p1", "p2"];
        let enhanced = admit(DonorAtlas::authorize(
            &request("enhance", &persons),
            &[overdrawn(ENHANCEMENT), BalanceState::new(EXPORT, 0)],
            &Marks::default(),
        ));
        assert_eq!(enhanced.admitted_items, 2);
        assert_eq!(enhanced.charge, vec![BalanceAmount::new(ENHANCEMENT, 2)]);
        let exported = admit(DonorAtlas::authorize(
            &request("export", &["d1", "d2"]),
            &[BalanceState::new(ENHANCEMENT, 0), overdrawn(EXPORT)],
            &Marks::default(),
        ));
        assert_eq!(exported.charge, vec![BalanceAmount::new(EXPORT, 2)]);
    }

    #[test]
    fn zero_enhancement_credits_is_402_payment_required() {
        let verdict = DonorAtlas::authorize(
            &request("enhance", &["a"]),
            &balances(0, 9),
            &Marks::default(),
        );
        assert_eq!(reject(verdict), (402, "payment_required".to_owned()));
    }

    #[test]
    fn enhancement_settle_charges_nothing_more_whatever_the_outcome() {
        let settlement = DonorAtlas::settle(
            &Admitted::default(),
            &Outcome {
                status: 500,
                ..Outcome::default()
            },
            &balances(1, 1),
            &Marks::default(),
        );
        assert!(settlement.charge.is_empty());
    }

    #[test]
    fn export_charges_one_credit_per_unique_new_donor_and_marks_it() {
        let marks = Marks::default();
        let admitted = admit(DonorAtlas::authorize(
            &request("export", &["d1", "d2", "d1"]),
            &balances(0, 5),
            &marks,
        ));
        assert_eq!(admitted.charge, vec![BalanceAmount::new(EXPORT, 2)]);
        assert_eq!(admitted.marks.len(), 2);
        assert_eq!(admitted.admitted_items, 3);
        assert_eq!(
            admitted.meta_json,
            r#"{"credits_used":2,"exports_remaining":3}"#
        );
    }

    #[test]
    fn re_export_of_a_donor_is_free() {
        let marks = Marks::default();
        marks.record(&admit(DonorAtlas::authorize(
            &request("export", &["d1"]),
            &balances(0, 5),
            &marks,
        )));
        let again = admit(DonorAtlas::authorize(
            &request("export", &["d1"]),
            &balances(0, 0),
            &marks,
        ));
        assert!(again.charge.is_empty() && again.marks.is_empty());
        assert_eq!(
            again.meta_json,
            r#"{"credits_used":0,"exports_remaining":0}"#
        );
    }

    #[test]
    fn more_new_donors_than_export_credits_is_402_and_exports_nothing() {
        let marks = Marks::default();
        let verdict = DonorAtlas::authorize(
            &request("export", &["a", "b", "c"]),
            &balances(9, 2),
            &marks,
        );
        assert_eq!(reject(verdict), (402, "payment_required".to_owned()));
    }

    #[test]
    fn free_operations_move_nothing() {
        for operation in ["search", "network.create", "list.add", "profile.get"] {
            let admitted = admit(DonorAtlas::authorize(
                &request(operation, &[]),
                &balances(0, 0),
                &Marks::default(),
            ));
            assert!(
                admitted.charge.is_empty() && admitted.hold.is_empty(),
                "{operation}"
            );
        }
    }

    #[test]
    fn unknown_operation_is_rejected_not_admitted_free() {
        let verdict = DonorAtlas::authorize(
            &request("profile.delete", &[]),
            &balances(9, 9),
            &Marks::default(),
        );
        assert_eq!(reject(verdict), (400, "unknown_operation".to_owned()));
    }
}
