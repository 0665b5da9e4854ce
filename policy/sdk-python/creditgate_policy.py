"""The creditgate policy SDK for Python guests (componentize-py).

A policy is a class `Pricing` in a module `app`, with the three functions of the
contract's `pricing` interface (`wit/policy.wit`). This module gives it what the Rust
SDK gives a Rust policy:

- verdicts and settlements with defaults: `admit`, `reject`, `settlement`;
- amounts that cannot silently go wrong: every amount handed to the host goes through
  `credits`, which refuses anything but a Python `int` from 0 to 2^63 - 1 (a float, a
  bool, a negative or a too large number raises `AmountError`, and the call traps: the
  host fails closed, it never moves a wrong amount);
- `meta`, a JSON object writer for `meta-json` that refuses floats (money is integers);
- `spendable`, what a tenant may still spend on a balance (its credits, its overdraft,
  within its spend cap), as the host computes it.
"""

import json
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from wit_world.imports import types

I64_MAX = 2**63 - 1
"""The largest amount the contract carries (`s64`)."""
U32_MAX = 2**32 - 1
U16_MAX = 2**16 - 1
"""The largest item count (`admitted-items` is a `u32`)."""


class AmountError(ValueError):
    """An amount that is not a whole number of credits the contract can carry."""


def credits(value: int) -> int:
    """`value` if it is a whole, non-negative number of credits that fits an `s64`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(f"an amount must be an int of credits, not {type(value).__name__} {value!r}")
    if not 0 <= value <= I64_MAX:
        raise AmountError(f"an amount must be 0 to 2^63 - 1 credits, not {value}")
    return value


def amounts(pairs: Iterable[Tuple[str, int]]) -> List[types.BalanceAmount]:
    """`(balance, credits)` pairs as the contract's amounts, each checked by `credits`."""
    return [types.BalanceAmount(balance, credits(amount)) for balance, amount in pairs]


def attribute(pairs: Sequence[types.Pair], name: str) -> Optional[str]:
    """The value of attribute `name` (names are unique), or None."""
    for pair in pairs:
        if pair.name == name:
            return pair.value
    return None


def is_success(outcome: types.Outcome) -> bool:
    """Whether the upstream work succeeded (a 2xx status)."""
    return 200 <= outcome.status < 300


def spendable(balances: Sequence[types.BalanceState], balance: str) -> int:
    """What can still be spent on `balance`: `available + overdraft-limit`, no more than
    the spend cap leaves (`cap - spent`), never negative; zero for a balance not listed."""
    for state in balances:
        if state.balance == balance:
            within = state.available + state.overdraft_limit
            if state.spend_cap is not None:
                within = min(within, state.spend_cap.cap - state.spend_cap.spent)
            return min(max(within, 0), I64_MAX)
    return 0


def meta(**fields: Union[str, int, bool, None]) -> str:
    """A JSON object for `meta-json`, keys in the order given. Floats are refused (money
    is integers); ints must fit an `s64`, as the host reads them."""
    for name, value in fields.items():
        if isinstance(value, float):
            raise AmountError(f"meta field '{name}' is a float: money is integers")
        if isinstance(value, int) and not isinstance(value, bool) and not -I64_MAX - 1 <= value <= I64_MAX:
            raise AmountError(f"meta field '{name}' = {value} does not fit an s64")
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def _whole(value: int, most: int, what: str) -> int:
    """A count or a status: an int from 0 to `most`; `AmountError` otherwise, as the
    JavaScript SDK throws it for the same numbers."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise AmountError(f"{what} must be an int from 0 to {most}, not {value!r}")
    return value


def reject(status: int, code: str, message: str) -> types.Verdict:
    """Refuse the whole request: nothing moves."""
    return types.Verdict_Reject(types.Rejection(_whole(status, U16_MAX, "status"), code, message))


def admit(
    admitted_items: int,
    *,
    hold: Iterable[Tuple[str, int]] = (),
    charge: Iterable[Tuple[str, int]] = (),
    marks: Iterable[Tuple[str, str]] = (),
    headers: Iterable[Tuple[str, str]] = (),
    meta_json: str = "{}",
    status: Optional[int] = None,
) -> types.Verdict:
    """Admit the first `admitted_items` items, holding and charging `(balance, credits)`."""
    return types.Verdict_Admit(
        types.Admission(
            None if status is None else _whole(status, U16_MAX, "status"),
            _whole(admitted_items, U32_MAX, "admitted_items"),
            amounts(hold),
            amounts(charge),
            [types.Mark(scope, key) for scope, key in marks],
            [types.Pair(name, value) for name, value in headers],
            meta_json,
        )
    )


def settlement(
    *,
    charge: Iterable[Tuple[str, int]] = (),
    marks: Iterable[Tuple[str, str]] = (),
    headers: Iterable[Tuple[str, str]] = (),
    meta_json: str = "{}",
) -> types.Settlement:
    """Charge `(balance, credits)` for an outcome."""
    return types.Settlement(
        amounts(charge),
        [types.Mark(scope, key) for scope, key in marks],
        [types.Pair(name, value) for name, value in headers],
        meta_json,
    )
