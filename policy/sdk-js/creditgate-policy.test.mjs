// The JavaScript SDK's own tests, run by Node's built-in runner (`node --test policy/sdk-js/`;
// the Rust suite runs them: cli/tests/it/guest_sdks.rs). They mirror the Python SDK's
// (policy/sdk-python/test_creditgate_policy.py), plus the cases of figures beyond 2^53,
// which a JS number cannot carry exactly.

import { describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  AmountError,
  U32_MAX,
  admit,
  credits,
  hostAmount,
  meta,
  reject,
  settlement,
  spendable,
} from "./creditgate-policy.js";

const SAFE_MAX = Number.MAX_SAFE_INTEGER; // 2^53 - 1

function state(available, overdraft = 0, cap = null) {
  const spendCap = cap === null ? null : { cap: cap[0], spent: cap[1], endsAtMs: 0 };
  return { balance: "default", available, overdraftLimit: overdraft, spendCap };
}

describe("amounts", () => {
  test("whole credits in range pass", () => {
    for (const value of [0, 1, SAFE_MAX]) {
      assert.equal(credits(value), value);
    }
  });

  test("-0 passes, as 0", () => {
    assert.ok(Object.is(credits(-0), 0));
  });

  test("anything the contract cannot carry exactly is refused", () => {
    const refused = [
      -1, 2 ** 53, 2 ** 53 + 1, 1.5, NaN, Infinity, -Infinity, true, "3", null, undefined, 3n,
    ];
    for (const value of refused) {
      assert.throws(() => credits(value), AmountError, String(value));
    }
  });

  test("every amount of a verdict or settlement is checked", () => {
    assert.throws(() => admit(1, { hold: [["default", 2 ** 53 + 1]] }), AmountError);
    assert.throws(() => admit(1, { charge: [["default", 0.5]] }), AmountError);
    assert.throws(() => settlement({ charge: [["default", -1]] }), AmountError);
    assert.throws(() => admit(2 ** 32), AmountError);
    assert.throws(() => admit(1.5), AmountError);
    assert.throws(() => admit(1, { status: 65536 }), AmountError);
    assert.throws(() => reject(-1, "c", "m"), AmountError);
    assert.equal(admit(U32_MAX).val.admittedItems, U32_MAX);
  });

  test("hostAmount takes a safe integer, negative or not, and refuses anything else", () => {
    assert.equal(hostAmount(-5), -5);
    assert.equal(hostAmount(SAFE_MAX), SAFE_MAX);
    for (const value of [2 ** 53, -(2 ** 53), 9223372036854775807, 1.5, NaN, "3", 3n, null]) {
      assert.throws(() => hostAmount(value, "available"), AmountError, String(value));
    }
  });
});

describe("verdicts", () => {
  test("admit fills the defaults", () => {
    const verdict = admit(3, { hold: [["default", 3]], meta: meta({ credits_held: 3 }) });
    assert.deepEqual(verdict, {
      tag: "admit",
      val: {
        status: null,
        admittedItems: 3,
        hold: [{ balance: "default", amount: 3 }],
        charge: [],
        marks: [],
        headers: [],
        metaJson: '{"credits_held":3}',
      },
    });
  });

  test("admit carries what it is given", () => {
    const verdict = admit(1, {
      charge: [["default", 2]],
      marks: [["seen", "a"]],
      headers: [["x-credits", "2"]],
      status: 207,
    });
    assert.equal(verdict.val.status, 207);
    assert.deepEqual(verdict.val.charge, [{ balance: "default", amount: 2 }]);
    assert.deepEqual(verdict.val.marks, [{ scope: "seen", key: "a" }]);
    assert.deepEqual(verdict.val.headers, [{ name: "x-credits", value: "2" }]);
    assert.equal(verdict.val.metaJson, "{}");
  });

  test("reject carries status, code and message", () => {
    assert.deepEqual(reject(402, "insufficient_credits", "No."), {
      tag: "reject",
      val: { status: 402, code: "insufficient_credits", message: "No." },
    });
  });

  test("settlement fills the defaults", () => {
    assert.deepEqual(settlement({ charge: [["default", 4]] }), {
      charge: [{ balance: "default", amount: 4 }],
      marks: [],
      headers: [],
      metaJson: "{}",
    });
  });
});

describe("meta", () => {
  test("is a JSON object in the order given", () => {
    const text = meta({ b: 1, a: "x", c: true, d: null });
    assert.equal(text, '{"b":1,"a":"x","c":true,"d":null}');
    assert.deepEqual(JSON.parse(text), { b: 1, a: "x", c: true, d: null });
    assert.equal(meta(), "{}");
    assert.equal(meta([["1", 1], ["0", 0]]), '{"1":1,"0":0}');
  });

  test("escapes strings as the Rust SDK does", () => {
    const value = 'a "b" \\ \n\t\r\u0001\u001f é ✓';
    const text = meta({ why: value });
    assert.equal(text, '{"why":"a \\"b\\" \\\\ \\n\\t\\r\\u0001\\u001f é ✓"}');
    assert.equal(JSON.parse(text).why, value);
  });

  test("money is never a fraction nor an unsafe integer", () => {
    assert.throws(() => meta({ price: 0.1 }), AmountError);
    assert.throws(() => meta({ total: 2 ** 53 }), AmountError);
    assert.throws(() => meta({ total: NaN }), AmountError);
    assert.throws(() => meta({ total: 3n }), TypeError);
  });
});

describe("spendable", () => {
  test("credits plus overdraft, within the cap, never negative", () => {
    assert.equal(spendable([state(5)], "default"), 5);
    assert.equal(spendable([state(-1, 3)], "default"), 2);
    assert.equal(spendable([state(100, 0, [10, 9])], "default"), 1);
    assert.equal(spendable([state(-5, 3)], "default"), 0);
    assert.equal(spendable([state(5)], "export"), 0);
  });

  test("figures beyond 2^53 that cannot change the answer saturate at 2^53 - 1", () => {
    const max = 9223372036854775807; // i64::MAX, as the host sends it: 2^63 in JS
    assert.equal(spendable([state(max, max)], "default"), SAFE_MAX);
    assert.equal(spendable([state(max, 0, [max, 0])], "default"), SAFE_MAX);
    assert.equal(spendable([state(5, 0, [max, 2 ** 60])], "default"), 5);
  });

  test("figures beyond 2^53 whose rounding could change the answer are refused", () => {
    // A cap of 2^60 with 2^60 spent leaves 0, or a few credits: each may be off by 256.
    assert.throws(() => spendable([state(100, 0, [2 ** 60, 2 ** 60])], "default"), AmountError);
    assert.throws(() => spendable([state(-(2 ** 60), 2 ** 60)], "default"), AmountError);
    assert.throws(() => spendable([state(1.5)], "default"), AmountError);
  });
});
