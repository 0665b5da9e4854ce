"""The Python SDK's own tests, run natively by CPython against the contract's generated
bindings (`policy/build-guests` writes them to target/guest-tools/python-bindings; the
Rust suite runs this file: cli/tests/it/guest_sdks.rs)."""

import json
import unittest

from creditgate_policy import (
    AmountError,
    I64_MAX,
    admit,
    credits,
    meta,
    reject,
    settlement,
    spendable,
)
from wit_world.imports import types


def state(available, overdraft=0, cap=None):
    window = None if cap is None else types.SpendWindow(cap[0], cap[1], 0)
    return types.BalanceState("default", available, overdraft, window)


class Amounts(unittest.TestCase):
    def test_whole_credits_in_range_pass(self):
        for value in (0, 1, I64_MAX):
            self.assertEqual(credits(value), value)

    def test_anything_the_contract_cannot_carry_exactly_is_refused(self):
        for value in (-1, I64_MAX + 1, 1.0, 2.5, True, "3", None):
            with self.assertRaises(AmountError, msg=repr(value)):
                credits(value)

    def test_every_amount_of_a_verdict_is_checked(self):
        with self.assertRaises(AmountError):
            admit(1, hold=[("default", 2**63)])
        with self.assertRaises(AmountError):
            settlement(charge=[("default", -1)])
        for count in (2**32, 1.5, True, -1):
            with self.assertRaises(AmountError, msg=repr(count)):
                admit(count)
        with self.assertRaises(AmountError):
            admit(1, status=65536)
        with self.assertRaises(AmountError):
            reject(-1, "c", "m")


class Verdicts(unittest.TestCase):
    def test_admit_fills_the_defaults(self):
        verdict = admit(3, hold=[("default", 3)], meta_json=meta(credits_held=3))
        self.assertIsInstance(verdict, types.Verdict_Admit)
        admission = verdict.value
        self.assertEqual(admission.admitted_items, 3)
        self.assertEqual(admission.hold, [types.BalanceAmount("default", 3)])
        self.assertEqual((admission.charge, admission.marks, admission.headers), ([], [], []))
        self.assertIsNone(admission.status)
        self.assertEqual(admission.meta_json, '{"credits_held":3}')

    def test_reject_carries_status_code_and_message(self):
        verdict = reject(402, "insufficient_credits", "No.")
        self.assertIsInstance(verdict, types.Verdict_Reject)
        self.assertEqual(verdict.value, types.Rejection(402, "insufficient_credits", "No."))


class Meta(unittest.TestCase):
    def test_meta_is_a_json_object_in_the_order_given(self):
        text = meta(b=1, a="x", c=True, d=None)
        self.assertEqual(text, '{"b":1,"a":"x","c":true,"d":null}')
        self.assertEqual(json.loads(text), {"b": 1, "a": "x", "c": True, "d": None})

    def test_money_is_never_a_float(self):
        with self.assertRaises(AmountError):
            meta(price=0.1)
        with self.assertRaises(AmountError):
            meta(total=2**63)


class Spendable(unittest.TestCase):
    def test_credits_plus_overdraft_within_the_cap_never_negative(self):
        self.assertEqual(spendable([state(5)], "default"), 5)
        self.assertEqual(spendable([state(-1, overdraft=3)], "default"), 2)
        self.assertEqual(spendable([state(100, cap=(10, 9))], "default"), 1)
        self.assertEqual(spendable([state(-5, overdraft=3)], "default"), 0)
        self.assertEqual(spendable([state(I64_MAX, overdraft=I64_MAX)], "default"), I64_MAX)
        self.assertEqual(spendable([state(5)], "export"), 0)


if __name__ == "__main__":
    unittest.main()
