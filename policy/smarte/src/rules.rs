//! The Smarte rules, apart from the component export so that test fixtures can
//! compile them into deliberately broken variants (see `tests/fixtures`).

use creditgate_policy_sdk::{
    Admission, Admitted, BalanceAmount, BalanceState, Description, JsonObject, Ledger, Outcome,
    Policy, Request, Settlement, Verdict, spendable_of,
};

/// The one balance this policy spends.
pub const BALANCE: &str = "default";
/// The price of one delivered record, in credits. The only place the price lives.
pub const CREDITS_PER_RECORD: i64 = 1;
/// How long a hold waits for its settle.
pub const HOLD_TTL_MS: u64 = 5 * 60 * 1000;

/// The metered operations: person, company and the specialized enrichments.
pub const OPERATIONS: [&str; 6] = [
    "person.enrich",
    "company.enrich",
    "email.enrich",
    "mobile.enrich",
    "technographics.enrich",
    "funding.enrich",
];

pub struct Smarte;

/// Why a settle charged what it charged; reported in `meta.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettleReason {
    Delivered,
    AuditOnly,
    AuthenticationFailed,
    ValidationFailed,
    RateLimited,
    NoMatch,
    EmptyData,
    InvalidRecordsAttribute,
    UpstreamFailed,
}

impl SettleReason {
    fn code(self) -> &'static str {
        match self {
            SettleReason::Delivered => "delivered",
            SettleReason::AuditOnly => "audit_only",
            SettleReason::AuthenticationFailed => "authentication_failed",
            SettleReason::ValidationFailed => "validation_failed",
            SettleReason::RateLimited => "rate_limited",
            SettleReason::NoMatch => "no_match",
            SettleReason::EmptyData => "empty_data",
            SettleReason::InvalidRecordsAttribute => "invalid_records_attribute",
            SettleReason::UpstreamFailed => "upstream_failed",
        }
    }
}

fn is_audit_only(request: &Request) -> bool {
    request
        .attribute("mode")
        .is_some_and(|mode| mode.eq_ignore_ascii_case("AUD"))
}

/// Records a request asks for: one per batch item, and one for a single-record call.
fn records_requested(request: &Request) -> i64 {
    i64::try_from(request.items.len().max(1)).unwrap_or(i64::MAX)
}

/// Records delivered by the outcome and the reason for the charge.
fn records_delivered(outcome: &Outcome) -> (i64, SettleReason) {
    match outcome.status {
        401 | 403 => return (0, SettleReason::AuthenticationFailed),
        400 | 422 => return (0, SettleReason::ValidationFailed),
        429 => return (0, SettleReason::RateLimited),
        404 => return (0, SettleReason::NoMatch),
        _ if !outcome.is_success() => return (0, SettleReason::UpstreamFailed),
        _ => {}
    }
    if outcome.attribute("fields") == Some("0") {
        return (0, SettleReason::EmptyData);
    }
    match outcome.attribute("records").map(str::parse::<i64>) {
        None | Some(Ok(0)) => (0, SettleReason::NoMatch),
        Some(Ok(records)) if records > 0 => (records, SettleReason::Delivered),
        Some(_) => (0, SettleReason::InvalidRecordsAttribute),
    }
}

impl Policy for Smarte {
    fn describe() -> Description {
        Description {
            name: "smarte".to_owned(),
            version: "1.0.0".to_owned(),
            balances: vec![BALANCE.to_owned()],
            hold_ttl_ms: HOLD_TTL_MS,
        }
    }

    fn authorize(request: &Request, balances: &[BalanceState], _ledger: &dyn Ledger) -> Verdict {
        if !OPERATIONS.contains(&request.operation.as_str()) {
            return Verdict::reject(
                400,
                "unknown_operation",
                format!(
                    "Operation '{}' is not metered by this policy.",
                    request.operation
                ),
            );
        }
        let admitted_items = u32::try_from(request.items.len()).unwrap_or(u32::MAX);
        if is_audit_only(request) {
            return Verdict::Admit(Admission {
                admitted_items,
                meta_json: JsonObject::new().str("mode", "AUD").finish(),
                ..Admission::default()
            });
        }
        let required = records_requested(request).saturating_mul(CREDITS_PER_RECORD);
        // What the tenant may spend: its credits, its overdraft, within its spend cap.
        let available = spendable_of(balances, BALANCE);
        if available < required {
            return Verdict::reject(
                402,
                "insufficient_credits",
                format!("Insufficient credits: {required} required, {available} available."),
            );
        }
        Verdict::Admit(Admission {
            admitted_items,
            hold: vec![BalanceAmount::new(BALANCE, required)],
            meta_json: JsonObject::new().int("credits_held", required).finish(),
            ..Admission::default()
        })
    }

    fn settle(
        admitted: &Admitted,
        outcome: &Outcome,
        _balances: &[BalanceState],
        _ledger: &dyn Ledger,
    ) -> Settlement {
        let (records, reason) = if is_audit_only(&admitted.request) {
            (0, SettleReason::AuditOnly)
        } else {
            let (delivered, reason) = records_delivered(outcome);
            // Never bill past what was requested (and so held).
            (delivered.min(records_requested(&admitted.request)), reason)
        };
        let deducted = records.saturating_mul(CREDITS_PER_RECORD);
        let mut headers = Vec::with_capacity(2);
        if outcome.is_success() {
            headers.push(("credits-deducted".to_owned(), deducted.to_string()));
        }
        headers.push((
            "x-transaction-id".to_owned(),
            admitted.request.transaction_id.clone(),
        ));
        let charge = if deducted > 0 {
            vec![BalanceAmount::new(BALANCE, deducted)]
        } else {
            Vec::new()
        };
        Settlement {
            charge,
            marks: Vec::new(),
            headers,
            meta_json: JsonObject::new()
                .int("records_delivered", records)
                .int("credits_deducted", deducted)
                .str("reason", reason.code())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditgate_policy_sdk::SpendWindow;

    type Attributes<'a> = &'a [(&'a str, &'a str)];

    struct NoMarks;
    impl Ledger for NoMarks {
        fn marked(&self, _scope: &str, keys: &[String]) -> Vec<bool> {
            vec![false; keys.len()]
        }
    }

    fn request(operation: &str, items: usize, attributes: &[(&str, &str)]) -> Request {
        Request {
            transaction_id: "t-1".to_owned(),
            tenant: "acme".to_owned(),
            operation: operation.to_owned(),
            items: (0..items).map(|i| format!("r{i}")).collect(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: None,
        }
    }

    fn balance(credits: i64) -> Vec<BalanceState> {
        vec![BalanceState::new(BALANCE, credits)]
    }

    fn admission(verdict: Verdict) -> Admission {
        match verdict {
            Verdict::Admit(admission) => admission,
            Verdict::Reject(rejection) => unreachable!("expected admit, got {rejection:?}"),
        }
    }

    fn settle(request: Request, status: u16, attributes: &[(&str, &str)]) -> Settlement {
        let held = admission(Smarte::authorize(&request, &balance(100), &NoMarks)).hold;
        let admitted = Admitted {
            admitted_items: u32::try_from(request.items.len()).unwrap_or(0),
            request,
            held,
            charged: Vec::new(),
        };
        let outcome = Outcome {
            status,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: None,
        };
        Smarte::settle(&admitted, &outcome, &balance(99), &NoMarks)
    }

    fn header<'a>(settlement: &'a Settlement, name: &str) -> Option<&'a str> {
        settlement
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn authorize_holds_one_credit_per_requested_record() {
        let admitted = admission(Smarte::authorize(
            &request("person.enrich", 3, &[]),
            &balance(5),
            &NoMarks,
        ));
        assert_eq!(admitted.hold, vec![BalanceAmount::new(BALANCE, 3)]);
        assert!(admitted.charge.is_empty());
        assert_eq!(admitted.admitted_items, 3);
    }

    #[test]
    fn a_single_record_call_holds_one_credit() {
        let admitted = admission(Smarte::authorize(
            &request("company.enrich", 0, &[]),
            &balance(1),
            &NoMarks,
        ));
        assert_eq!(admitted.hold, vec![BalanceAmount::new(BALANCE, 1)]);
    }

    #[test]
    fn insufficient_credits_rejects_with_402_before_processing() {
        let verdict = Smarte::authorize(&request("person.enrich", 3, &[]), &balance(2), &NoMarks);
        let Verdict::Reject(rejection) = verdict else {
            unreachable!("short balance must reject");
        };
        assert_eq!(rejection.status, 402);
        assert_eq!(rejection.code, "insufficient_credits");
    }

    #[test]
    fn exactly_enough_credits_is_admitted() {
        let verdict = Smarte::authorize(&request("email.enrich", 2, &[]), &balance(2), &NoMarks);
        assert!(matches!(verdict, Verdict::Admit(_)));
    }

    #[test]
    fn an_overdraft_admits_what_it_covers_and_a_spend_cap_bounds_it() {
        let overdrawn = vec![BalanceState {
            overdraft_limit: 3,
            ..BalanceState::new(BALANCE, -1)
        }];
        let admitted = admission(Smarte::authorize(
            &request("person.enrich", 2, &[]),
            &overdrawn,
            &NoMarks,
        ));
        assert_eq!(admitted.hold, vec![BalanceAmount::new(BALANCE, 2)]);
        let past_the_overdraft =
            Smarte::authorize(&request("person.enrich", 3, &[]), &overdrawn, &NoMarks);
        assert!(matches!(past_the_overdraft, Verdict::Reject(ref r) if r.status == 402));
        let capped = vec![BalanceState {
            spend_cap: Some(SpendWindow {
                cap: 10,
                spent: 9,
                resets_at_ms: 0,
            }),
            ..BalanceState::new(BALANCE, 100)
        }];
        let past_the_cap = Smarte::authorize(&request("person.enrich", 2, &[]), &capped, &NoMarks);
        assert!(matches!(past_the_cap, Verdict::Reject(ref r) if r.status == 402));
    }

    #[test]
    fn audit_only_mode_is_admitted_with_no_hold_even_at_zero_balance() {
        let admitted = admission(Smarte::authorize(
            &request("person.enrich", 2, &[("mode", "AUD")]),
            &balance(0),
            &NoMarks,
        ));
        assert!(admitted.hold.is_empty() && admitted.charge.is_empty());
    }

    #[test]
    fn audit_only_mode_is_never_charged() {
        let settlement = settle(
            request("person.enrich", 1, &[("mode", "AUD")]),
            200,
            &[("records", "1")],
        );
        assert!(settlement.charge.is_empty());
        assert_eq!(header(&settlement, "credits-deducted"), Some("0"));
    }

    #[test]
    fn delivered_records_are_charged_one_credit_each() {
        let settlement = settle(request("person.enrich", 3, &[]), 200, &[("records", "2")]);
        assert_eq!(settlement.charge, vec![BalanceAmount::new(BALANCE, 2)]);
        assert_eq!(header(&settlement, "credits-deducted"), Some("2"));
        assert_eq!(header(&settlement, "x-transaction-id"), Some("t-1"));
    }

    #[test]
    fn delivery_beyond_the_request_is_charged_only_up_to_the_request() {
        let settlement = settle(request("person.enrich", 1, &[]), 200, &[("records", "9")]);
        assert_eq!(settlement.charge, vec![BalanceAmount::new(BALANCE, 1)]);
    }

    #[test]
    fn failures_and_empty_answers_are_never_charged() {
        let cases: [(u16, Attributes<'_>, &str); 9] = [
            (401, &[("records", "1")], "authentication_failed"),
            (403, &[("records", "1")], "authentication_failed"),
            (400, &[], "validation_failed"),
            (422, &[], "validation_failed"),
            (429, &[("records", "1")], "rate_limited"),
            (404, &[], "no_match"),
            (200, &[("records", "0")], "no_match"),
            (200, &[("records", "1"), ("fields", "0")], "empty_data"),
            (500, &[("records", "1")], "upstream_failed"),
        ];
        for (status, attributes, reason) in cases {
            let settlement = settle(request("person.enrich", 1, &[]), status, attributes);
            assert!(settlement.charge.is_empty(), "status {status} was charged");
            assert!(
                settlement.meta_json.contains(reason),
                "status {status}: {}",
                settlement.meta_json
            );
        }
    }

    #[test]
    fn every_2xx_settle_carries_credits_deducted_even_when_zero() {
        let settlement = settle(request("person.enrich", 1, &[]), 200, &[("records", "0")]);
        assert_eq!(header(&settlement, "credits-deducted"), Some("0"));
        let failed = settle(request("person.enrich", 1, &[]), 429, &[]);
        assert_eq!(header(&failed, "credits-deducted"), None);
        assert_eq!(header(&failed, "x-transaction-id"), Some("t-1"));
    }

    #[test]
    fn unknown_operation_is_rejected_not_admitted_free() {
        let verdict = Smarte::authorize(&request("search", 0, &[]), &balance(10), &NoMarks);
        let Verdict::Reject(rejection) = verdict else {
            unreachable!("unknown operation must reject");
        };
        assert_eq!(
            (rejection.status, rejection.code.as_str()),
            (400, "unknown_operation")
        );
    }
}
