"""The SMARTe rules (`../shared/seeds`) in Python: the same rules as `policy/smarte`,
written with the Python SDK (`policy/sdk-python`) and built with componentize-py. The
conformance suite runs both against the same cases."""

import re

from creditgate_policy import admit, attribute, is_success, meta, reject, settlement, spendable
from wit_world import exports
from wit_world.imports import types

BALANCE = "default"
"""The one balance this policy spends."""
CREDITS_PER_RECORD = 1
"""The price of one delivered record, in credits."""
HOLD_TTL_MS = 5 * 60 * 1000
"""How long a hold waits for its settle."""
OPERATIONS = (
    "person.enrich",
    "company.enrich",
    "email.enrich",
    "mobile.enrich",
    "technographics.enrich",
    "funding.enrich",
)
"""The metered operations: person, company and the specialized enrichments."""

I64_MAX = 2**63 - 1
# What Rust's `str::parse::<i64>` accepts: an optional sign and ASCII digits.
INTEGER = re.compile(r"[+-]?[0-9]+")


def is_audit_only(request: types.Request) -> bool:
    mode = attribute(request.attributes, "mode")
    return mode is not None and mode.isascii() and mode.lower() == "aud"


def records_requested(request: types.Request) -> int:
    """One record per batch item, and one for a single-record call."""
    return max(len(request.items), 1)


def records_delivered(outcome: types.Outcome) -> tuple:
    """Records delivered by the outcome, and the reason for the charge."""
    status = outcome.status
    if status in (401, 403):
        return 0, "authentication_failed"
    if status in (400, 422):
        return 0, "validation_failed"
    if status == 429:
        return 0, "rate_limited"
    if status == 404:
        return 0, "no_match"
    if not is_success(outcome):
        return 0, "upstream_failed"
    if attribute(outcome.attributes, "fields") == "0":
        return 0, "empty_data"
    records = attribute(outcome.attributes, "records")
    if records is None:
        return 0, "no_match"
    if INTEGER.fullmatch(records) is None or not -I64_MAX - 1 <= int(records) <= I64_MAX:
        return 0, "invalid_records_attribute"
    delivered = int(records)
    if delivered == 0:
        return 0, "no_match"
    if delivered > 0:
        return delivered, "delivered"
    return 0, "invalid_records_attribute"


class Pricing(exports.Pricing):
    def describe(self) -> types.Description:
        return types.Description("smarte", "1.0.0", [BALANCE], HOLD_TTL_MS)

    def authorize(self, request: types.Request, balances) -> types.Verdict:
        if request.operation not in OPERATIONS:
            return reject(
                400,
                "unknown_operation",
                f"Operation '{request.operation}' is not metered by this policy.",
            )
        admitted_items = len(request.items)
        if is_audit_only(request):
            return admit(admitted_items, meta_json=meta(mode="AUD"))
        required = records_requested(request) * CREDITS_PER_RECORD
        available = spendable(balances, BALANCE)
        if available < required:
            return reject(
                402,
                "insufficient_credits",
                f"Insufficient credits: {required} required, {available} available.",
            )
        return admit(
            admitted_items,
            hold=[(BALANCE, required)],
            meta_json=meta(credits_held=required),
        )

    def settle(self, admitted: types.Admitted, outcome: types.Outcome, balances) -> types.Settlement:
        if is_audit_only(admitted.request):
            records, reason = 0, "audit_only"
        else:
            delivered, reason = records_delivered(outcome)
            # Never bill past what was requested (and so held).
            records = min(delivered, records_requested(admitted.request))
        deducted = records * CREDITS_PER_RECORD
        headers = []
        if is_success(outcome):
            headers.append(("credits-deducted", str(deducted)))
        headers.append(("x-transaction-id", admitted.request.transaction_id))
        return settlement(
            charge=[(BALANCE, deducted)] if deducted > 0 else [],
            headers=headers,
            meta_json=meta(records_delivered=records, credits_deducted=deducted, reason=reason),
        )
