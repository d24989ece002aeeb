"""Guards on input: what the terms forbid sending through BatchRouter.

Items whose text holds a payment card number (a Luhn-valid run of 13 to 19 digits, spaces or dashes
allowed between digits) or a credential (a private key block, or a common API-key format) are
rejected with `restricted_content`, unless the workspace's policy sets `allow_restricted_content`.
The detected value is never logged, stored or echoed: the reason names only the kind of content.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from itertools import accumulate

import polars as pl

# A cheap superset of card-number runs for the vectorised pass; candidates are confirmed in Python
# (13-19 digits of whole groups of a run with single space/dash separators, then Luhn).
CARD_CANDIDATE = r"[0-9][0-9 -]{11,}[0-9]"
# A maximal run of digits with single space/dash separators, e.g. "4111 1111 1111 1111 123".
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9])*")
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit doubled, minus 9 when over 9

CREDENTIALS = {
    "private key": r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
    "OpenAI or Anthropic API key": r"\bsk-(?:proj-|ant-(?:api|admin)\d\d-)?[A-Za-z0-9_-]{20,}",
    "AWS access key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "Stripe secret key": r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",
    # Not `\b` at the end: a key may end with '-' (no lookaround: the pattern also runs in Polars).
    "Google API key": r"\bAIza[0-9A-Za-z_-]{35}(?:[^0-9A-Za-z_-]|$)",
}
_CREDENTIAL = "|".join(f"(?:{p})" for p in CREDENTIALS.values())


def luhn_valid(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def has_card_number(text: str) -> bool:
    """A Luhn-valid 13-19 digit number, alone or as whole groups of a longer run.

    A card number followed (or preceded) by other digits after a separator, such as its expiry or
    CVV ("4111 1111 1111 1111 123"), is still found: every span of whole groups is tried, in time
    linear in the text (prefix sums of the Luhn terms, so each span is checked in O(1)).
    """
    for match in _DIGIT_RUN.finditer(text):
        run = match.group()
        digits = run.replace(" ", "").replace("-", "")
        if len(digits) < 13:
            continue
        if len(digits) == len(run):  # one group: only the whole number can be a card number
            if len(digits) <= 19 and luhn_valid(digits):
                return True
            continue
        # Offsets (in `digits`) where groups start and end; a candidate spans whole groups.
        cuts, seen = [0], 0
        for ch in run:
            if ch in " -":
                cuts.append(seen)
            else:
                seen += 1
        cuts.append(len(digits))
        # Luhn doubles every second digit counting from the last one: in a span ending at `end`, the
        # digits at positions of the same parity as `end`. sums[parity][k]: the first k digits' terms.
        values = [ord(c) - 48 for c in digits]
        sums = [
            [0, *accumulate(_DOUBLED[v] if i % 2 == parity else v for i, v in enumerate(values))] for parity in (0, 1)
        ]
        for i in range(len(cuts) - 1):
            first = cuts[i]
            for j in range(bisect_left(cuts, first + 13, i + 1), bisect_right(cuts, first + 19, i + 1)):
                last = cuts[j]
                total = sums[last % 2][last] - sums[last % 2][first]
                if total % 10 == 0:
                    return True
    return False


def credential_kind(text: str) -> str | None:
    for kind, pattern in CREDENTIALS.items():
        if re.search(pattern, text):
            return kind
    return None


def restricted(texts: pl.Series) -> pl.Series:
    """Per text: null when clean, else the kind of restricted content found (never the value)."""
    frame = pl.DataFrame({"t": texts}).with_row_index("i")
    # Vectorised prefilter; the few candidates are confirmed in Python.
    candidates = frame.filter(pl.col("t").str.contains(CARD_CANDIDATE) | pl.col("t").str.contains(_CREDENTIAL))
    found: dict[int, str] = {}
    for i, text in candidates.iter_rows():
        kind = credential_kind(text)
        if kind is None and has_card_number(text):
            kind = "payment card number"
        if kind is not None:
            found[i] = kind
    return pl.Series("restricted", [found.get(i) for i in range(len(texts))], dtype=pl.String)


def item_restrictions(items: pl.DataFrame) -> pl.Series:
    """Per item (`system`, `prompt`, `messages`): the first kind of restricted content found, or null.

    Each text column is scanned where it is, without joining an item's texts into a copy; system
    prompts, usually shared by a whole batch, are scanned once per distinct text.
    """
    system = items["system"]
    distinct = system.drop_nulls().unique()
    found = dict(zip(distinct.to_list(), restricted(distinct).to_list(), strict=True))
    by_system = (
        system.replace_strict(found, default=None, return_dtype=pl.String) if found else system.clear(len(system))
    )
    by_prompt = restricted(items["prompt"].fill_null(""))
    contents = items.select(
        pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n").fill_null("")
    ).to_series()
    by_messages = (
        restricted(contents) if items["messages"].null_count() < items.height else by_prompt.clear(len(by_prompt))
    )
    return (
        pl.DataFrame({"s": by_system, "p": by_prompt, "m": by_messages})
        .select(pl.coalesce("s", "p", "m"))
        .to_series()
        .rename("restricted")
    )
