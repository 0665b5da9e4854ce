/**
 * The DonorAtlas rules in JavaScript: the same rules as `policy/donoratlas`
 * (`src/rules.rs`), written with the JavaScript SDK (`policy/sdk-js`) and built with
 * componentize-qjs. The conformance suite runs both against the same cases.
 */

import ledger from "creditgate:policy/ledger@0.2.0";
import { admit, meta, reject, settlement, spendable } from "../sdk-js/creditgate-policy.js";

const ENHANCEMENT = "enhancement";
const EXPORT = "export";
/** The mark scope recording which donors a tenant has exported. */
const EXPORTED_SCOPE = "exported";
/** Credits per enhanced person and per newly exported donor. */
const CREDITS_PER_PERSON = 1;
const CREDITS_PER_NEW_DONOR = 1;
/** This policy holds nothing (it charges at authorize); the TTL bounds an open
 * transaction's wait for its settle all the same. */
const HOLD_TTL_MS = 15 * 60 * 1000;

function isFree(operation) {
  return (
    operation === "search" ||
    operation === "profile.get" ||
    operation.startsWith("network.") ||
    operation.startsWith("list.")
  );
}

function emptyBatch(what) {
  return reject(400, "empty_batch", `No ${what} submitted.`);
}

function enhance(request, balances) {
  const requested = request.items.length;
  if (requested === 0) {
    return emptyBatch("persons");
  }
  // What the tenant may spend: its credits, its overdraft, within its spend cap.
  const credits = spendable(balances, ENHANCEMENT);
  const affordable = Math.floor(credits / CREDITS_PER_PERSON);
  if (affordable <= 0) {
    return reject(402, "payment_required", "No enhancement credits remaining.");
  }
  const processed = Math.min(requested, affordable);
  const charged = processed * CREDITS_PER_PERSON;
  const partial = processed < requested;
  const fields = {
    requested,
    processed,
    imports_charged: charged,
    imports_remaining: credits - charged,
    partial,
  };
  if (partial) {
    fields.partial_reason = `Only ${credits} credits remaining, but ${requested} persons requested`;
  }
  return admit(processed, {
    status: 202,
    charge: [[ENHANCEMENT, charged]],
    meta: meta(fields),
  });
}

function exportDonors(request, balances) {
  if (request.items.length === 0) {
    return emptyBatch("donors");
  }
  // Each donor once, in the order first seen.
  const unique = [...new Set(request.items)];
  const alreadyExported = ledger.marked(EXPORTED_SCOPE, unique);
  // As Rust's `zip`: a donor without an answer is dropped.
  const newDonors = unique
    .slice(0, alreadyExported.length)
    .filter((_, index) => !alreadyExported[index]);
  const creditsUsed = newDonors.length * CREDITS_PER_NEW_DONOR;
  const credits = spendable(balances, EXPORT);
  if (creditsUsed > credits) {
    return reject(
      402,
      "payment_required",
      `Not enough export credits: ${creditsUsed} needed, ${credits} remaining.`,
    );
  }
  return admit(request.items.length, {
    charge: creditsUsed > 0 ? [[EXPORT, creditsUsed]] : [],
    marks: newDonors.map((donor) => [EXPORTED_SCOPE, donor]),
    meta: meta({ credits_used: creditsUsed, exports_remaining: credits - creditsUsed }),
  });
}

export const pricing = {
  describe() {
    return {
      name: "donoratlas",
      version: "1.0.0",
      balances: [ENHANCEMENT, EXPORT],
      holdTtlMs: HOLD_TTL_MS,
    };
  },

  authorize(request, balances) {
    const operation = request.operation;
    if (operation === "enhance") {
      return enhance(request, balances);
    }
    if (operation === "export") {
      return exportDonors(request, balances);
    }
    if (isFree(operation)) {
      return admit(request.items.length, { meta: "{}" });
    }
    return reject(
      400,
      "unknown_operation",
      `Operation '${operation}' is not part of the partners API.`,
    );
  },

  /** Everything was charged at authorize: settle moves nothing. */
  settle(admitted, outcome, balances) {
    return settlement({ meta: "{}" });
  },
};
