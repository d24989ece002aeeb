"""Amounts of money: the one rule every entry point applies before an amount reaches the ledger.

Money is an `int` of micro-dollars (1 USD = 1,000,000). An amount is valid when it is a whole
number of micro-dollars from 0 to `MAX_USD_MICROS` (10^15 micro-dollars, one billion USD: far
above any real balance, far below where 64-bit sums could overflow). USD amounts written by people
(`--usd 12.5`, config `auto_approve_max_usd`, pack prices) are plain decimals: no NaN, infinity,
exponent notation (`1e3`), sign, or more than 6 decimal places.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from batchrouter.core.errors import AmountError as AmountError

MICROS_PER_USD = 1_000_000
PICO_PER_MICRO = 10**6
MAX_USD_MICROS = 10**15
MAX_USD = Decimal(MAX_USD_MICROS) / MICROS_PER_USD
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,16}(\.[0-9]{1,6})?")


def micros_up(pico: int) -> int:
    """Pico-dollars rounded up to whole micro-dollars: the most an exact cost is ever charged."""
    return -(-pico // PICO_PER_MICRO)


def charge_lines(costs_pico: list[int]) -> list[int]:
    """What each line of one settled group is charged, in micro-dollars, from its exact cost in pico-dollars.

    The group pays its exact total rounded up to the micro-dollar once, not each line rounded up: the
    charges add up to ceil(sum / 10^6), and each line pays its own exact cost rounded down or up (line i
    pays ceil(running total to i) - ceil(running total before i)). So no line pays more than its exact
    cost rounded up, which its quote already bounds, and a whole number of micro-dollars stays as it is.
    Per-line rounding up costs about half a micro-dollar a line: a few percent on a line of ten.
    """
    charges: list[int] = []
    before = running = 0
    for cost in costs_pico:
        running += cost
        upto = micros_up(running)
        charges.append(upto - before)
        before = upto
    return charges


def micros_problem(value: object, *, allow_zero: bool = True) -> str | None:
    """Why `value` is not a valid amount in micro-dollars, or None when it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number of micro-dollars, got {type(value).__name__} {value!r}"
    if value < 0:
        return f"cannot be negative, got {value}"
    if value == 0 and not allow_zero:
        return "must be more than zero"
    if value > MAX_USD_MICROS:
        return f"is over the maximum of {MAX_USD_MICROS:,} micro-dollars ({MAX_USD:,} USD), got {value:,}"
    return None


def check_micros(value: object, *, field: str, allow_zero: bool = True) -> int:
    """`value` when it is a valid amount in micro-dollars; AmountError naming `field` otherwise."""
    problem = micros_problem(value, allow_zero=allow_zero)
    if problem:
        raise AmountError(f"{field} {problem}")
    assert isinstance(value, int)
    return value


def usd_to_micros(value: object, *, field: str, allow_zero: bool = False) -> int:
    """A USD amount written by a person (text, int or Decimal) in micro-dollars, checked.

    Floats are refused unless they hold a plain decimal exactly as written (`12.5`): a float from a
    JSON body or TOML file is converted through its shortest repr, never through binary arithmetic.
    """
    if isinstance(value, bool):
        raise AmountError(f"{field} must be an amount in USD such as 12.50, got {value!r}")
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, Decimal):
        text = format(value.normalize(), "f") if value.is_finite() else str(value)
    elif isinstance(value, int | str):
        text = str(value).strip()
    else:
        raise AmountError(f"{field} must be an amount in USD such as 12.50, got {type(value).__name__}")
    if text.endswith(".0") and isinstance(value, float):
        text = text[:-2]
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise AmountError(
            f"{field} {text!r} is not a plain amount in USD: write digits with at most 6 decimal places "
            "(such as 12.50), without sign, exponent, NaN or infinity"
        )
    try:
        micros = int(Decimal(text) * MICROS_PER_USD)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only plain decimals
        raise AmountError(f"{field} {text!r} is not a number") from exc
    return check_micros(micros, field=field, allow_zero=allow_zero)
