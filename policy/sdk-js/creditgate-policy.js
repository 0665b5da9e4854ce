/**
 * The creditgate policy SDK for JavaScript guests (componentize-qjs, `--sync`).
 *
 * A policy is an ES module exporting `pricing`, an object with the three functions of
 * the contract's `pricing` interface (`wit/policy.wit`): `describe`, `authorize`,
 * `settle`. It reads the ledger with `import ledger from "creditgate:policy/ledger@0.2.0"`.
 * This module gives it what the Rust SDK gives a Rust policy:
 *
 * - verdicts and settlements with defaults: `admit`, `reject`, `settlement`;
 * - amounts that cannot silently go wrong: componentize-qjs maps the contract's `s64`
 *   to a plain JS number, exact only to 2^53. Every amount handed to the host goes
 *   through `credits`, which refuses anything but a safe integer (`Number.isSafeInteger`)
 *   >= 0; an amount read from the host goes through `hostAmount`, which refuses one
 *   that is not a safe integer, or through `spendable`, which uses a figure beyond 2^53
 *   only when it cannot change the answer. Either throws `AmountError`, and the call
 *   traps: the host fails closed, it never moves a wrong amount;
 * - `meta`, a JSON object writer for `meta-json` that refuses fractions and unsafe
 *   integers (money is integers);
 * - `spendable`, what a tenant may still spend on a balance (its credits, its overdraft,
 *   within its spend cap), as the host computes it.
 *
 * Records are objects with camelCase keys (`admittedItems`, `metaJson`, `spendCap`...),
 * a variant is `{tag, val}`, an `option` is its value or `null`.
 */

/** The largest item count (`admitted-items` is a `u32`). */
export const U32_MAX = 2 ** 32 - 1;

/** An amount that is not a whole number of credits the contract can carry exactly. */
export class AmountError extends Error {
  constructor(message) {
    super(message);
    this.name = "AmountError";
  }
}

function show(value) {
  return typeof value === "string" ? JSON.stringify(value) : `${typeof value} ${String(value)}`;
}

/** `value` if it is a whole, non-negative number of credits a JS number carries exactly
 * (a safe integer); throws `AmountError` otherwise. Every amount given to the host. */
export function credits(value) {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new AmountError(`an amount must be 0 to 2^53 - 1 credits, not ${show(value)}`);
  }
  return value === 0 ? 0 : value; // never -0
}

/** `value`, an amount read from the host (`what` names it), if it is a safe integer;
 * throws `AmountError` otherwise (beyond 2^53 the number is not the host's amount). */
export function hostAmount(value, what = "amount") {
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new AmountError(`${what} from the host is not exact as a JS number: ${show(value)}`);
  }
  return value;
}

// The integers a figure from the host may stand for, as [low, high] BigInts: itself
// when it is a safe integer; otherwise the s64 it was rounded from, which lies within
// one unit in the last place of it (the host's own probe sends i64::MAX).
function hostRange(value, what) {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new AmountError(`${what} from the host is not an integer: ${show(value)}`);
  }
  const exact = BigInt(value);
  if (Number.isSafeInteger(value)) {
    return [exact, exact];
  }
  const bits = (exact < 0n ? -exact : exact).toString(2).length;
  const ulp = 2n ** BigInt(bits - 53);
  return [exact - ulp, exact + ulp];
}

const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);

/** What can still be spent on `balance` (`BalanceState::spendable` in the Rust SDK):
 * `available + overdraftLimit`, no more than the spend cap leaves (`cap - spent`), never
 * negative; zero for a balance not listed. Exact, or saturated at 2^53 - 1 as the Rust
 * SDK saturates at 2^63 - 1: figures beyond 2^53 (which reach JS rounded) are used only
 * when every s64 they may stand for gives that same answer; otherwise it throws
 * `AmountError`. */
export function spendable(balances, balance) {
  const state = balances.find((entry) => entry.balance === balance);
  if (state === undefined) {
    return 0;
  }
  const [availableLow, availableHigh] = hostRange(state.available, `${balance}.available`);
  const [limitLow, limitHigh] = hostRange(state.overdraftLimit, `${balance}.overdraftLimit`);
  let low = availableLow + limitLow;
  let high = availableHigh + limitHigh;
  if (state.spendCap !== null && state.spendCap !== undefined) {
    const [capLow, capHigh] = hostRange(state.spendCap.cap, `${balance}.spendCap.cap`);
    const [spentLow, spentHigh] = hostRange(state.spendCap.spent, `${balance}.spendCap.spent`);
    low = low < capLow - spentHigh ? low : capLow - spentHigh;
    high = high < capHigh - spentLow ? high : capHigh - spentLow;
  }
  const clamp = (figure) => (figure < 0n ? 0n : figure > SAFE_MAX ? SAFE_MAX : figure);
  if (clamp(low) !== clamp(high)) {
    throw new AmountError(`what can be spent on ${balance} is not exact as a JS number`);
  }
  return Number(clamp(low));
}

/** The value of attribute `name` in `pairs` (a request's or outcome's `attributes`;
 * names are unique), or `null`. */
export function attribute(pairs, name) {
  const pair = pairs.find((entry) => entry.name === name);
  return pair === undefined ? null : pair.value;
}

/** Whether the upstream work succeeded (a 2xx status). */
export function isSuccess(outcome) {
  return outcome.status >= 200 && outcome.status < 300;
}

// JSON text of a string, escaped as the Rust SDK's `JsonObject` escapes it.
function jsonString(value) {
  let out = '"';
  for (const ch of value) {
    const code = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

/** A flat JSON object for `meta-json`, from an object (or a `Map`, or `[name, value]`
 * pairs), fields in its order; the same text as the Rust SDK's `JsonObject`. Values are
 * strings, booleans, `null` and integers; a fraction, a non-finite or unsafe number, or
 * anything else throws (money is integers). Note that JS enumerates an object's
 * integer-like keys ("0", "42") first: pass pairs to order those. */
export function meta(fields = {}) {
  const entries =
    fields instanceof Map || Array.isArray(fields) ? [...fields] : Object.entries(fields);
  const parts = entries.map(([name, value]) => {
    let text;
    if (typeof value === "string") text = jsonString(value);
    else if (typeof value === "boolean") text = value ? "true" : "false";
    else if (value === null) text = "null";
    else if (typeof value === "number" && Number.isSafeInteger(value)) text = String(value);
    else if (typeof value === "number") {
      throw new AmountError(`meta field '${name}' = ${value} is not a safe integer: money is integers`);
    } else throw new TypeError(`meta field '${name}' is a ${typeof value}: only strings, booleans, null and integers`);
    return `${jsonString(String(name))}:${text}`;
  });
  return `{${parts.join(",")}}`;
}

function text(value, what) {
  if (typeof value !== "string") {
    throw new TypeError(`${what} must be a string, not ${show(value)}`);
  }
  return value;
}

/** A count or a status: an integer from 0 to `max`; throws `AmountError` otherwise, as
 * the Python SDK raises it for the same numbers. */
function whole(value, max, what) {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > max) {
    throw new AmountError(`${what} must be an integer from 0 to ${max}, not ${show(value)}`);
  }
  return value === 0 ? 0 : value;
}

function amounts(pairs) {
  return [...pairs].map(([balance, amount]) => ({
    balance: text(balance, "a balance name"),
    amount: credits(amount),
  }));
}

function marksOf(pairs) {
  return [...pairs].map(([scope, key]) => ({
    scope: text(scope, "a mark's scope"),
    key: text(key, "a mark's key"),
  }));
}

function headersOf(pairs) {
  return [...pairs].map(([name, value]) => ({
    name: text(name, "a header name"),
    value: text(value, "a header value"),
  }));
}

/** Refuse the whole request with an HTTP `status`, a stable `code` and a one-sentence
 * `message`: nothing moves. The contract's `verdict` `reject`. */
export function reject(status, code, message) {
  return {
    tag: "reject",
    val: {
      status: whole(status, 0xffff, "status"),
      code: text(code, "code"),
      message: text(message, "message"),
    },
  };
}

/** Admit the first `admittedItems` items: the contract's `verdict` `admit`. `hold` and
 * `charge` are `[balance, credits]` pairs (each amount through `credits`), `marks`
 * `[scope, key]` pairs, `headers` `[name, value]` pairs, `meta` the `meta-json` text
 * (see `meta`), `status` an HTTP status or `null` to leave it to the gateway. */
export function admit(
  admittedItems,
  { hold = [], charge = [], marks = [], headers = [], meta = "{}", status = null } = {},
) {
  return {
    tag: "admit",
    val: {
      status: status === null ? null : whole(status, 0xffff, "status"),
      admittedItems: whole(admittedItems, U32_MAX, "admittedItems"),
      hold: amounts(hold),
      charge: amounts(charge),
      marks: marksOf(marks),
      headers: headersOf(headers),
      metaJson: text(meta, "meta"),
    },
  };
}

/** What settle answers: `charge` as `[balance, credits]` pairs (each through `credits`),
 * `marks` `[scope, key]` pairs, `headers` `[name, value]` pairs, `meta` the `meta-json`
 * text. The contract's `settlement` record. */
export function settlement({ charge = [], marks = [], headers = [], meta = "{}" } = {}) {
  return {
    charge: amounts(charge),
    marks: marksOf(marks),
    headers: headersOf(headers),
    metaJson: text(meta, "meta"),
  };
}
