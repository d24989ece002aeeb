"""Guards on input: what the terms forbid sending through BatchRouter.

Two kinds of restricted content are found, each with the format it matched:
  card         a payment card number: an issuer's prefix and length (Visa, Mastercard, Amex, ...),
               written contiguously or in a printed grouping (4-4-4-4, Amex 4-6-5, Diners 4-6-4, ...)
               with one separator (space or hyphen) throughout, Luhn-valid, and not part of a longer
               run of digits or of a word
  credential   a secret in a published format (`CREDENTIALS`): cloud keys, provider API keys, tokens,
               private keys, JWTs; public identifiers and documented placeholders are not secrets

Everything an item sends is scanned (`SCANNED_COLUMNS`): `system`, `prompt`, every message's
`content`, `name` and `raw` (when the message struct has it), and every string of the `params` and
`metadata` JSON, keys included. The scan is vectorised: Polars `str.contains` over each text column
with cheap superset patterns (`prefilters`), then exact checks in Python on the few candidates.

A finding says where (`messages[2].content`, `params.tools`) and what (`card`, `Visa`), never the
value; nothing here logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

Kind = Literal["card", "credential"]

# The item columns whose text reaches a provider; a rejected item's copies of them are redacted.
SCANNED_COLUMNS = ("system", "prompt", "messages", "params", "metadata")
MESSAGE_FIELDS = ("content", "name", "raw")  # `raw`: the original message JSON, when present
_JSON_FIELDS = frozenset({"params", "metadata", "raw"})


@dataclass(frozen=True)
class Finding:
    """Where restricted content was found and what it is; never the value itself."""

    field: str  # e.g. "prompt", "messages[2].content", "params.tools"
    kind: Kind
    format: str  # e.g. "Visa", "GitHub token"


# -- payment cards -------------------------------------------------------------------------------------------
# (issuer, prefix ranges over the first digits (low and high of equal length), allowed lengths).
# More specific ranges come first where ranges of two issuers overlap.
_ISSUERS: tuple[tuple[str, tuple[tuple[str, str], ...], frozenset[int]], ...] = (
    ("American Express", (("34", "34"), ("37", "37")), frozenset({15})),
    ("Diners Club", (("300", "305"), ("3095", "3095"), ("36", "36"), ("38", "39")), frozenset(range(14, 20))),
    ("JCB", (("3528", "3589"),), frozenset(range(16, 20))),
    ("Visa", (("4", "4"),), frozenset({13, 16, 19})),
    ("Mir", (("2200", "2204"),), frozenset(range(16, 20))),
    ("Mastercard", (("51", "55"), ("2221", "2720")), frozenset({16})),
    ("Verve", (("506099", "506198"), ("650002", "650027")), frozenset({16, 18, 19})),
    (
        "Maestro",
        (
            ("5018", "5018"),
            ("5020", "5020"),
            ("5038", "5038"),
            ("5893", "5893"),
            ("6304", "6304"),
            ("6759", "6759"),
            ("6761", "6763"),
        ),
        frozenset(range(13, 20)),
    ),  # fmt: skip
    ("Discover", (("6011", "6011"), ("622126", "622925"), ("644", "649"), ("65", "65")), frozenset(range(16, 20))),
    ("UnionPay", (("62", "62"), ("81", "81")), frozenset(range(16, 20))),
    ("RuPay", (("508", "508"), ("60", "60"), ("6521", "6522")), frozenset({16})),
    ("Troy", (("9792", "9792"),), frozenset({16})),
)

# Group lengths as cards are printed or typed; a trailing CVV group may follow (see `_card_candidates`).
_GROUPINGS = frozenset(
    {(4, 4, 4, 4), (4, 4, 4, 4, 1), (4, 4, 4, 4, 2), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 5),
     (4, 4, 4, 3), (4, 4, 4, 2), (4, 4, 4, 1)}
)  # fmt: skip
# A superset of every card shape above, for the vectorised pass.
# (A pattern without a bounded run such as [0-9]{13} as its own branch: Polars' regex engine is ~40x faster so.)
CARD_PREFILTER = r"[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4}"
_DIGITS = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_SEPARATOR = re.compile(r"[ -]")
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NUMBER_JOINERS = frozenset(".,/:")  # 3.1415..., 1,234,..., a/b: digits on both sides make one number
_ESCAPE = re.compile(r"\\u[0-9A-Fa-f]{4}")


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


def card_issuer(digits: str) -> str | None:
    """The issuer whose prefix and length `digits` has, or None."""
    for issuer, ranges, lengths in _ISSUERS:
        if len(digits) in lengths:
            for low, high in ranges:
                if low <= digits[: len(low)] <= high:
                    return issuer
    return None


def _attached(text: str, at: int, step: int) -> bool:
    """Whether the character at `at` (looking in direction `step`) joins the digits into a longer word or number."""
    if not 0 <= at < len(text):
        return False
    ch = text[at]
    if step < 0 and _ESCAPE.fullmatch(text, max(0, at - 5), at + 1):
        return False  # an escaped character such as \uff1a (a full-width colon in ASCII-only JSON)
    if ch in _WORD or (step < 0 and ch == "+"):  # a letter or underscore; a leading + is a phone number
        return True
    nxt = at + step
    return ch in _NUMBER_JOINERS and 0 <= nxt < len(text) and text[nxt].isdigit()


def _card_candidates(text: str) -> Iterator[str]:
    """Digit strings written the way card numbers are, in order of appearance."""
    for match in _DIGITS.finditer(text):
        token = match.group()
        if len(token) < 13:
            continue
        groups = _SEPARATOR.split(token)
        seps = _SEPARATOR.findall(token)
        last = len(groups) - 1
        left_free = not _attached(text, match.start() - 1, -1)
        right_free = not _attached(text, match.end(), 1)

        # A contiguous number, unless hyphenated to a neighbour (an id like 12-4111111111111111).
        for k, group in enumerate(groups):
            hyphenated = (k > 0 and seps[k - 1] == "-") or (k < last and seps[k] == "-")
            if 13 <= len(group) <= 19 and not hyphenated and (k > 0 or left_free) and (k < last or right_free):
                yield group
        # Grouped numbers: each maximal run of groups joined by one and the same separator.
        i = 0
        while i < last:
            j = i
            while j < last and seps[j] == seps[i]:
                j += 1
            spans = [(i, j)]
            if seps[i] == " ":
                # A space binds less than a hyphen or a letter: an end group that is part of a hyphenated run
                # or of a word ("... 8416 4b4d") belongs to that, and the rest may still be a card.
                lo, hi = i + (i > 0 or not left_free), j - (j < last or not right_free)
                spans += [(a, b) for a, b in ((lo, j), (i, hi), (lo, hi)) if b > a and (a, b) != (i, j)]
            for a, b in spans:
                lengths = tuple(len(g) for g in groups[a : b + 1])
                if (a == 0 and not left_free) or (b == last and not right_free):
                    continue  # glued to a word or number at the token's ends
                if lengths in _GROUPINGS:
                    yield "".join(groups[a : b + 1])
                if lengths[:-1] in _GROUPINGS and (
                    lengths[-1] == 3 or (lengths[:-1] == (4, 6, 5) and lengths[-1] == 4)
                ):
                    yield "".join(groups[a:b])  # followed by its CVV
            i = j


def find_card(text: str) -> str | None:
    """The issuer of the first card number in `text`, or None."""
    for digits in _card_candidates(text):
        issuer = card_issuer(digits)
        if issuer is not None and luhn_valid(digits):
            return issuer
    return None


def has_card_number(text: str) -> bool:
    return find_card(text) is not None


# -- credentials ---------------------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(
    r"(?i)example|sample|dummy|placeholder|redacted|your_?(?:api_?)?(?:key|token|secret)|xxxx|\*\*\*|\.\.\.|<|>"
    r"|([A-Za-z0-9])\1{5}"
)


def _real(value: str) -> bool:
    """Not a documented placeholder (EXAMPLE, xxxx, ***, a run of one character, ...)."""
    return _PLACEHOLDER.search(value) is None


def _pem_body(value: str) -> bool:
    """At least 40 characters of key material after the header (a header alone, or `...`, is an example)."""
    body = value[value.index("-----", 10) + 5 :].split("-----END", 1)[0]
    body = re.sub(r"\s|\\+[nrt]", "", body)
    return len(body) >= 40 and not re.search(r"(?i)x{4}|\.\.\.|(.)\1{15}", body)


def _jwt(value: str) -> bool:
    """A JSON header naming its algorithm; the well-known documentation token (John Doe) is a placeholder."""
    parts = value.split(".")

    def decoded(part: str) -> Any:
        try:
            return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (binascii.Error, ValueError):
            return None

    header, payload = decoded(parts[0]), decoded(parts[1])
    if not isinstance(header, dict) or "alg" not in header:
        return False
    return not (isinstance(payload, dict) and payload.get("name") == "John Doe" and payload.get("sub") == "1234567890")


_AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1"  # the storage emulator's published development key


@dataclass(frozen=True)
class CredentialFormat:
    """A published credential format: a cheap Polars-compatible prefilter and the exact check."""

    name: str
    prefilter: str  # literals (Rust regex) found in every match of `pattern`: a literal set scans fastest
    pattern: re.Pattern[str]  # group 1, when present, is the secret part checked by `check`
    check: Callable[[str], bool] = _real

    @property
    def gates(self) -> tuple[str, ...]:
        """Plain substrings one of which every match holds: the prefilter's literals up to their first class."""
        return tuple(re.split(r"[\[\\]", alternative, maxsplit=1)[0] for alternative in self.prefilter.split("|"))


_T = r"(?<![A-Za-z0-9_-])"  # a token starts here
_E = r"(?![A-Za-z0-9_-])"  # and ends here
_LABEL_VALUE = r"""["']?\s*[:=]\s*["']?"""


def _word(word: str) -> str:
    """A label word as people write it (lower, Capitalised or UPPER), matched by the literal prefilter."""
    return f"(?:{word}|{word.capitalize()}|{word.upper()})"


_SECRET_LABEL = f"(?:{_word('aws')}[_ ]?)?{_word('secret')}(?:[_ ]?{_word('access')})?(?:[_ ]?{_word('key')})?"
_AZURE_LABEL = f"(?:{_word('azure')}[_ ]?)?{_word('storage')}[_ ]?(?:{_word('account')}[_ ]?)?{_word('key')}"

CREDENTIALS: tuple[CredentialFormat, ...] = (
    CredentialFormat(
        "private key (PEM)",
        r"PRIVATE KEY",
        re.compile(
            r"-----BEGIN (?:(?:RSA|DSA|EC|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[A-Za-z0-9+/=\s:,-]|\\+[nrt])+"
        ),
        _pem_body,
    ),
    CredentialFormat(
        "private key (PuTTY)",
        r"PuTTY-User-Key-File-",
        re.compile(
            r"PuTTY-User-Key-File-[23]: [\s\S]{0,4000}?Private-Lines: [0-9]+(?:\s|\\[nr])+([A-Za-z0-9+/=]{40,})"
        ),
    ),
    CredentialFormat(
        "AWS access key id",
        r"AKIA|ASIA|ABIA|ACCA",
        re.compile(r"(?<![A-Za-z0-9])((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})(?![A-Za-z0-9])"),
    ),
    CredentialFormat(
        "AWS secret access key",
        r"secret|Secret|SECRET",
        re.compile(_SECRET_LABEL + _LABEL_VALUE + r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),  # fmt: skip
        lambda v: _real(v) and bool(re.search(r"[0-9/+]", v)) and bool(re.search(r"[A-Z]", v)),
    ),
    CredentialFormat("Google API key", r"AIza", re.compile(_T + r"(AIza[0-9A-Za-z_-]{35})" + _E)),
    CredentialFormat("Google OAuth client secret", r"GOCSPX-", re.compile(_T + r"(GOCSPX-[A-Za-z0-9_-]{28})" + _E)),
    CredentialFormat(
        "Azure storage key",
        r"AccountKey=|SharedAccessKey=|storage|Storage|STORAGE",
        re.compile(
            r"(?:AccountKey=|" + _AZURE_LABEL + _LABEL_VALUE + r")([A-Za-z0-9+/]{86}==)"
            r"|SharedAccessKey=([A-Za-z0-9+/]{43}=)"
        ),  # fmt: skip
        lambda v: _real(v) and not v.startswith(_AZURITE_KEY),
    ),
    CredentialFormat(
        "GitHub token",
        r"gh[pousr]_|github_pat_",
        re.compile(
            r"(?<![A-Za-z0-9_])(gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9]{20,}_[A-Za-z0-9]{50,})"
            r"(?![A-Za-z0-9_])"
        ),
    ),  # fmt: skip
    CredentialFormat("GitLab token", r"glpat-", re.compile(_T + r"(glpat-[A-Za-z0-9_-]{20,})" + _E)),
    CredentialFormat(
        "Slack token",
        r"xox[abposr]-|xapp-|hooks\.slack\.com/",
        re.compile(
            _T
            + r"(xox[abposr]-[0-9]{8,}-[A-Za-z0-9-]{8,}|xapp-[0-9]-[A-Z0-9]{8,}-[0-9]{8,}-[A-Za-z0-9]{32,})"
            + _E
            + r"|hooks\.slack\.com/(?:services|workflows)/(T[A-Z0-9]{8,}/[A-Z0-9]{8,}/[A-Za-z0-9]{20,})"
        ),  # fmt: skip
    ),
    CredentialFormat(
        "Stripe secret key",
        r"_live_|whsec_",
        re.compile(r"(?<![A-Za-z0-9_])((?:sk|rk)_live_[A-Za-z0-9]{20,}|whsec_[A-Za-z0-9]{32,})(?![A-Za-z0-9_])"),
    ),
    CredentialFormat(
        "Anthropic API key",
        r"sk-ant-",
        re.compile(_T + r"(sk-ant-(?:api|admin|oat|ort)[0-9]{2}-[A-Za-z0-9_-]{32,})" + _E),
    ),
    CredentialFormat(
        "OpenAI API key",
        r"sk-",
        re.compile(
            _T + r"(sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{32,}|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20,})" + _E
        ),
    ),
    CredentialFormat(
        "API key (sk-)",  # the format OpenAI's legacy keys and several other providers' keys share
        r"sk-",
        re.compile(_T + r"(sk-[A-Za-z0-9]{32,})" + _E),
    ),
    CredentialFormat("Hugging Face token", r"hf_", re.compile(r"(?<![A-Za-z0-9_])(hf_[A-Za-z0-9]{34,40})" + _E)),
    CredentialFormat("npm token", r"npm_", re.compile(r"(?<![A-Za-z0-9_])(npm_[A-Za-z0-9]{36})" + _E)),
    CredentialFormat(
        "JSON Web Token",
        r"eyJ",
        re.compile(
            r"(?<![A-Za-z0-9_.-])(eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,})(?![A-Za-z0-9_.-])"
        ),
        _jwt,
    ),
)


_GATED = [(f, f.gates) for f in CREDENTIALS]


def find_credential(text: str) -> str | None:
    """The format of the first credential in `text` (in `CREDENTIALS` order), or None."""
    for fmt, gates in _GATED:
        if not any(g in text for g in gates):  # a substring test is far cheaper than the pattern
            continue
        for match in fmt.pattern.finditer(text):
            value = next((g for g in match.groups() if g is not None), match.group())
            if fmt.check(value):
                return fmt.name
    return None


def credential_kind(text: str) -> str | None:
    return find_credential(text)


# -- scanning ------------------------------------------------------------------------------------------------
def prefilters(*, cards: bool = True, credentials: bool = True) -> list[str]:
    """Polars patterns that every text holding a card or credential matches (and few others do).

    Kept apart rather than joined into one: the card digits, the credentials' literals of 4 characters or
    more, and their 3-character literals (sk-, eyJ, hf_) each scan at several hundred MB/s, where one
    pattern holding them all is 3-4 times slower (measured on sample-manifest prompts).
    """
    literals = list(dict.fromkeys(a for f in CREDENTIALS for a in f.prefilter.split("|")))
    short = [a for a in literals if len(a.replace("\\", "")) <= 3]
    long = [a for a in literals if a not in short]
    return ([CARD_PREFILTER] if cards else []) + (["|".join(long), "|".join(short)] if credentials else [])


def find_in_text(text: str, *, cards: bool = True, credentials: bool = True) -> tuple[Kind, str] | None:
    if credentials and (fmt := find_credential(text)) is not None:
        return "credential", fmt
    if cards and (issuer := find_card(text)) is not None:
        return "card", issuer
    return None


_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def find_in_json(text: str, *, cards: bool = True, credentials: bool = True) -> tuple[str, Kind, str] | None:
    """In a JSON document: (the top-level key holding it or "", kind, format) of the first finding.

    Every string is checked, keys included, and each `key: value` pair too (a secret labelled by its
    key, such as `"aws_secret_access_key": "..."`); integers are checked as digits. Text that is not
    JSON is checked as it is.
    """
    try:
        return _find_in_document(json.loads(text), cards=cards, credentials=credentials)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to walk: check it as text
        found = find_in_text(text, cards=cards, credentials=credentials)
        return None if found is None else ("", *found)


def _find_in_document(doc: Any, *, cards: bool, credentials: bool) -> tuple[str, Kind, str] | None:
    def walk(node: Any) -> tuple[Kind, str] | None:
        if isinstance(node, str):
            found = find_in_text(node, cards=cards, credentials=credentials)
            if found is None and node[:1] in ("{", "["):  # JSON in a string, like a tool call's arguments
                try:
                    return walk(json.loads(node))
                except ValueError:
                    return None
            return found
        if isinstance(node, bool) or node is None or isinstance(node, float):
            return None
        if isinstance(node, int):
            return find_in_text(str(node), cards=cards, credentials=False)
        if isinstance(node, list):
            return next((f for f in map(walk, node) if f is not None), None)
        if isinstance(node, dict):
            for key, value in node.items():
                found = walk(key) or walk(value)
                if found is None and isinstance(value, str | int) and not isinstance(value, bool):
                    found = find_in_text(f"{key}: {value}", cards=False, credentials=credentials)
                if found is not None:
                    return found
        return None

    if isinstance(doc, dict):
        for key, value in doc.items():
            found = walk({key: value})
            if found is not None:
                # The key names the field only if it cannot be a secret of any kind, allowed or not.
                named = _SAFE_KEY.fullmatch(key) is not None and find_in_text(key) is None
                return (key if named else "", *found)
        return None
    found = walk(doc)
    return None if found is None else ("", *found)


def _find_in_field(name: str, value: str | None, *, cards: bool, credentials: bool) -> Finding | None:
    if value is None:
        return None
    if name.rsplit(".", 1)[-1] in _JSON_FIELDS:
        hit = find_in_json(value, cards=cards, credentials=credentials)
        if hit is None:
            return None
        key, kind, fmt = hit
        # A message's raw JSON holds its own fields (tool_calls, content parts): name them as such.
        where = name.removesuffix(".raw") if key and name.endswith(".raw") else name
        return Finding(f"{where}.{key}" if key else name, kind, fmt)
    found = find_in_text(value, cards=cards, credentials=credentials)
    return None if found is None else Finding(name, *found)


def scan(items: pl.DataFrame, *, cards: bool = True, credentials: bool = True) -> pl.DataFrame:
    """Per item (aligned with `items`): `field`, `kind`, `format` of the first restricted content, or nulls.

    Fields are checked in the order they are sent: system, prompt, messages (each content, name, raw),
    params, metadata. Columns missing from `items` are skipped.
    """
    empty = pl.DataFrame(
        {"field": [None] * items.height, "kind": [None] * items.height, "format": [None] * items.height},
        schema={"field": pl.String, "kind": pl.String, "format": pl.String},
    )
    if items.height == 0 or not (cards or credentials):
        return empty
    patterns = prefilters(cards=cards, credentials=credentials)
    # JSON columns are checked decoded; an escape (\u0034, \/) could hide a value from the patterns.
    json_patterns = [*patterns, r"\\u[0-9A-Fa-f]{4}|\\/"]

    def candidate(text: pl.Expr, name: str) -> pl.Expr:
        text = text.cast(pl.String)
        return pl.any_horizontal(
            text.str.contains(p).fill_null(False) for p in (json_patterns if name in _JSON_FIELDS else patterns)
        )

    text_columns = [c for c in ("system", "prompt", "params", "metadata") if c in items.columns]
    masks = [candidate(pl.col(c), c) for c in text_columns]
    message_fields: list[str] = []
    if "messages" in items.columns:
        dtype = items.schema["messages"]
        inner = dtype.inner if isinstance(dtype, pl.List) else None
        if isinstance(inner, pl.Struct):
            names = {f.name for f in inner.fields}
            message_fields = [f for f in MESSAGE_FIELDS if f in names]
        if message_fields:
            element = pl.element().struct
            hit = pl.any_horizontal(candidate(element.field(f), f) for f in message_fields)
            masks.append(pl.col("messages").list.eval(hit).list.any().fill_null(False))
    if not masks:
        return empty
    candidates = (
        items.select(*text_columns, *(["messages"] if message_fields else []))
        .with_row_index("_i")
        .filter(pl.any_horizontal(masks))
    )
    found: dict[int, Finding] = {}
    for row in candidates.iter_rows(named=True):
        finding = find_in_item(row, message_fields=message_fields, cards=cards, credentials=credentials)
        if finding is not None:
            found[row["_i"]] = finding
    if not found:
        return empty
    index = pl.DataFrame(
        {
            "_i": list(found),
            "field": [f.field for f in found.values()],
            "kind": [f.kind for f in found.values()],
            "format": [f.format for f in found.values()],
        },
        schema={"_i": pl.UInt32, "field": pl.String, "kind": pl.String, "format": pl.String},
    )
    return (
        pl.DataFrame({"_i": pl.arange(0, items.height, dtype=pl.UInt32, eager=True)})
        .join(index, on="_i", how="left", maintain_order="left")
        .drop("_i")
    )


def find_in_item(
    item: Mapping[str, Any],
    *,
    message_fields: Sequence[str] = MESSAGE_FIELDS,
    cards: bool = True,
    credentials: bool = True,
) -> Finding | None:
    """The first restricted content of one item (a row of the item table as a dict), checked exactly."""

    def fields() -> Iterator[tuple[str, str | None]]:
        yield "system", item.get("system")
        yield "prompt", item.get("prompt")
        for i, message in enumerate(item.get("messages") or []):
            for f in message_fields:
                yield f"messages[{i}].{f}", message.get(f)
        yield "params", item.get("params")
        yield "metadata", item.get("metadata")

    for name, value in fields():
        finding = _find_in_field(name, value, cards=cards, credentials=credentials)
        if finding is not None:
            return finding
    return None
