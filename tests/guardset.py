"""The guards' labelled set, built at run time from text already on the machine (nothing copied in).

Negatives (label None): real public text read where it lies (the real batch files in
`../shared/realfiles` when present, the seed texts in `../shared/seeds`, the Python standard
library's licence, sources and test data in several languages, the licences, docs and data files
shipped in site-packages), plus look-alikes written here: dates, ISBNs, phone numbers, IBANs, order
and tracking numbers, versions, UUIDs, hashes, tables of scores, public keys and placeholders.

Positives: generated card numbers of every issuer in every printed grouping, and credentials of every
format (random, with a valid structure), put in every field an item sends (system, prompt, message
content, name and raw JSON, params, metadata) and embedded in real sentences, JSON, tool arguments
and code. Everything is chosen with fixed seeds, so the set and its labels are the same on every run.
"""

from __future__ import annotations

import base64
import json
import random
import string
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

Kind = Literal["card", "credential"]
SEED = 20261201
REALFILES = Path(__file__).resolve().parents[1].parent / "shared" / "realfiles"
SEEDS = REALFILES.parent / "seeds"
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String, "name": pl.String, "raw": pl.String})
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"


@dataclass(frozen=True)
class Sample:
    """One labelled item: what it sends, and what the guard must say about it."""

    name: str  # where it came from, e.g. "realfile:kmmlu#12" or "card:Visa/16/4-4-4-4/params.tools"
    category: str  # legal, medical, code, tables, multilingual, prose, lookalike, card, credential
    item: dict[str, Any]  # system, prompt, messages, params, metadata (absent keys are null)
    expected: Kind | None
    field: str | None = None  # the field a positive is in


# -- reading real text -------------------------------------------------------------------------------------
def _chunks(text: str, rng: random.Random, count: int, size: int = 1500) -> list[str]:
    """Up to `count` chunks of about `size` characters, starting and ending at line breaks."""
    if len(text) <= size:
        return [text] if text.strip() else []
    out = []
    for _ in range(count):
        start = rng.randrange(0, len(text) - size)
        start = text.find("\n", start) + 1 if "\n" in text[start : start + size // 2] else start
        end = text.rfind("\n", start, start + size)
        chunk = text[start : end if end > start else start + size]
        if chunk.strip():
            out.append(chunk)
    return out


def _category(text: str, default: str) -> str:
    """Text mostly outside ASCII counts as multilingual (Korean legal text stays legal)."""
    letters = [c for c in text if c.isalpha()]
    foreign = sum(1 for c in letters if ord(c) > 0x2FF)
    return "multilingual" if default == "prose" and letters and foreign > 0.3 * len(letters) else default


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _realfile_items(rng: random.Random) -> list[Sample]:
    """Items of the real batch files, as their lines send them (messages or input, and body fields)."""
    categories = {"kmmlu": "legal", "wes": "medical", "zgimszhd61": "multilingual", "querychain": "prose"}
    out: list[Sample] = []
    if not REALFILES.is_dir():
        return out
    for path in sorted(REALFILES.glob("*.jsonl")):
        lines = [ln for ln in _read(path).split("\n") if ln.strip()]
        stem = path.stem.split("_")[0]
        for n, line in sorted(rng.sample(list(enumerate(lines)), min(len(lines), 80))):
            body = json.loads(line).get("body", {})
            messages = body.get("messages")
            if messages is None:  # /v1/responses: input as a string or a list of messages
                given = body.get("input")
                messages = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
                messages = (
                    [{"role": "system", "content": body["instructions"]}, *messages]
                    if "instructions" in body
                    else messages
                )
            rows = []
            for m in messages:
                content = m.get("content")
                text = content if isinstance(content, str) else None
                raw = json.dumps(m, ensure_ascii=False) if not isinstance(content, str) else None
                rows.append({"role": m.get("role"), "content": text, "name": m.get("name"), "raw": raw})
            params = {k: v for k, v in body.items() if k not in ("model", "messages", "input", "instructions")}
            item = {"messages": rows, "params": json.dumps(params, ensure_ascii=False) if params else None}
            texts = " ".join(r["content"] or "" for r in rows)
            out.append(Sample(f"realfile:{stem}#{n + 1}", _category(texts, categories.get(stem, "prose")), item, None))
    return out


def _text_items(rng: random.Random) -> list[Sample]:
    """Chunks of real text shipped on the machine: licences, sources, test data, tables, docs."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    sources: list[tuple[str, str, list[Path], int]] = [
        ("seeds", "legal", sorted(SEEDS.glob("*.txt")) if SEEDS.is_dir() else [], 8),
        ("stdlib-licence", "legal", [stdlib / "LICENSE.txt"], 10),
        ("cjk", "multilingual", sorted((stdlib / "test" / "cjkencodings").glob("*-utf8.txt")), 3),
        ("decimal-tests", "tables", sorted((stdlib / "test" / "decimaltestdata").glob("*.decTest")), 1),
        ("email", "prose", sorted((stdlib / "test" / "test_email" / "data").glob("msg_*.txt")), 1),
        ("stdlib-code", "code", sorted(stdlib.glob("*.py")), 1),
        ("tz-tables", "tables", sorted((site / "tzdata" / "zoneinfo").glob("*.tab")), 4),
        ("site-licences", "legal", sorted(site.glob("*.dist-info/LICENSE*")), 1),
        ("site-docs", "code", sorted(site.glob("*.dist-info/METADATA")), 1),
        ("aws-examples", "code", sorted((site / "botocore" / "data").glob("*/*/examples-1.json")), 1),
        ("random-tables", "tables", sorted((site / "numpy" / "random" / "tests" / "data").glob("*.csv")), 3),
        ("certificates", "code", [site / "certifi" / "cacert.pem"], 10),
        ("json-schemas", "code", sorted((site / "jsonschema_specifications" / "schemas").rglob("*")), 1),
    ]
    out: list[Sample] = []
    for name, category, paths, per_file in sources:
        paths = [p for p in paths if p.is_file()]
        picked = paths if len(paths) <= 40 else sorted(rng.sample(paths, 40))
        for path in picked:
            for i, chunk in enumerate(_chunks(_read(path), rng, per_file)):
                out.append(Sample(f"{name}:{path.name}#{i}", _category(chunk, category), {"prompt": chunk}, None))
    return out


# -- generated values --------------------------------------------------------------------------------------
def check_digit(body: str) -> str:
    """The Luhn check digit that completes `body` (written here independently of the guard)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card_number(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + check_digit(body)


# (issuer, a prefix, lengths) per issuer, from the networks' published ranges.
ISSUERS = [
    ("Visa", ["4"], [13, 16, 19]),
    ("Mastercard", ["51", "55", "2221", "2720", "2500"], [16]),
    ("American Express", ["34", "37"], [15]),
    ("Discover", ["6011", "65", "644", "649", "622126"], [16, 19]),
    ("Diners Club", ["300", "305", "36", "38"], [14]),
    ("JCB", ["3528", "3589"], [16, 19]),
    ("UnionPay", ["62"], [16, 17, 18, 19]),
    ("Maestro", ["5018", "6304", "6759"], [13, 16, 19]),
    ("Mir", ["2200", "2204"], [16]),
    ("RuPay", ["508", "60"], [16]),
]
GROUPINGS = {
    13: [(4, 4, 5)],
    14: [(4, 6, 4)],
    15: [(4, 6, 5)],
    16: [(4, 4, 4, 4)],
    17: [(4, 4, 4, 4, 1)],
    18: [(4, 4, 4, 4, 2)],
    19: [(4, 4, 4, 4, 3)],
}


def grouped(number: str, groups: tuple[int, ...], sep: str) -> str:
    parts, at = [], 0
    for g in groups:
        parts.append(number[at : at + g])
        at += g
    return sep.join(parts)


def _token(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _pem(rng: random.Random, label: str, *, escaped: bool = False) -> str:
    body = base64.b64encode(rng.randbytes(rng.choice([600, 900, 1200]))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    nl = "\\n" if escaped else "\n"
    return nl.join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"])


def credentials(rng: random.Random) -> list[tuple[str, str]]:
    """(format name, value) for every credential format, random with a valid structure."""
    aws_id = "AKIA" + _token(rng, string.ascii_uppercase + "234567", 16)
    aws_secret = _token(rng, B64, 38) + "A/"
    azure_key = _token(rng, B64, 86) + "=="
    jwt = ".".join(
        [
            _b64url({"alg": "HS256", "typ": "JWT"}),
            _b64url({"sub": _token(rng, ALNUM, 12), "iat": 1733000000}),
            _token(rng, B64URL, 43),
        ]
    )
    jwt_rs = ".".join(
        [_b64url({"alg": "RS256", "kid": _token(rng, ALNUM, 8)}), _b64url({"scope": "read"}), _token(rng, B64URL, 342)]
    )
    account = {"type": "service_account", "project_id": "demo", "private_key_id": _token(rng, "0123456789abcdef", 40)}
    service_account = json.dumps({**account, "private_key": _pem(rng, "PRIVATE KEY")})
    return [
        ("private key (RSA)", _pem(rng, "RSA PRIVATE KEY")),
        ("private key (EC)", _pem(rng, "EC PRIVATE KEY")),
        ("private key (OpenSSH)", _pem(rng, "OPENSSH PRIVATE KEY")),
        ("private key (PKCS#8)", _pem(rng, "PRIVATE KEY")),
        ("private key (encrypted PKCS#8)", _pem(rng, "ENCRYPTED PRIVATE KEY")),
        ("private key (JSON-escaped)", _pem(rng, "PRIVATE KEY", escaped=True)),
        ("GCP service account", service_account),
        ("AWS access key id", aws_id),
        ("AWS temporary key id", "ASIA" + _token(rng, string.ascii_uppercase + "234567", 16)),
        ("AWS secret (env)", f"AWS_SECRET_ACCESS_KEY={aws_secret}"),
        ("AWS secret (ini)", f"aws_secret_access_key = {aws_secret}"),
        ("AWS secret (json)", json.dumps({"AccessKeyId": aws_id, "SecretAccessKey": aws_secret})),
        ("Google API key", "AIza" + _token(rng, B64URL, 35)),
        (
            "Azure connection string",
            f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={azure_key};EndpointSuffix=core.windows.net",
        ),
        ("Azure storage key (labelled)", f"AZURE_STORAGE_KEY={azure_key}"),
        (
            "Azure Service Bus key",
            f"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=root;"
            f"SharedAccessKey={_token(rng, B64, 43)}=",
        ),
        *((f"GitHub token ({p})", p + "_" + _token(rng, ALNUM, 36)) for p in ("ghp", "gho", "ghu", "ghs", "ghr")),
        ("GitHub fine-grained token", "github_pat_" + _token(rng, ALNUM, 22) + "_" + _token(rng, ALNUM, 59)),
        (
            "Slack bot token",
            "xoxb-"
            + _token(rng, string.digits, 12)
            + "-"
            + _token(rng, string.digits, 13)
            + "-"
            + _token(rng, ALNUM, 24),
        ),
        (
            "Slack user token",
            "xoxp-"
            + "-".join(_token(rng, string.digits, 12) for _ in range(3))
            + "-"
            + _token(rng, "0123456789abcdef", 32),
        ),
        (
            "Slack webhook",
            "https://hooks.slack.com/services/T"
            + _token(rng, string.ascii_uppercase + string.digits, 10)
            + "/B"
            + _token(rng, string.ascii_uppercase + string.digits, 10)
            + "/"
            + _token(rng, ALNUM, 24),
        ),
        ("Stripe secret key", "sk_live_" + _token(rng, ALNUM, 99)),
        ("Stripe restricted key", "rk_live_" + _token(rng, ALNUM, 24)),
        ("OpenAI project key", "sk-proj-" + _token(rng, B64URL, 156)),
        ("OpenAI service-account key", "sk-svcacct-" + _token(rng, B64URL, 120)),
        ("OpenAI legacy key", "sk-" + _token(rng, ALNUM, 20) + "T3BlbkFJ" + _token(rng, ALNUM, 20)),
        ("Anthropic API key", "sk-ant-api03-" + _token(rng, B64URL, 93) + "AA"),
        ("Anthropic admin key", "sk-ant-admin01-" + _token(rng, B64URL, 93) + "AA"),
        ("JWT (HS256)", jwt),
        ("JWT (RS256)", jwt_rs),
        ("GitLab token", "glpat-" + _token(rng, B64URL, 20)),
        ("Hugging Face token", "hf_" + _token(rng, string.ascii_letters, 34)),
    ]


# -- placing values in items -------------------------------------------------------------------------------
def _messages(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": r.get("role", "user"), "content": r.get("content"), "name": r.get("name"), "raw": r.get("raw")}
        for r in rows
    ]


def placements(value: str, sentence: str, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """(field, item) for `value` in every field an item sends, embedded as a user would write it."""
    cut = sentence.rfind(". ", 0, max(1, len(sentence) // 2)) + 1 or len(sentence) // 2
    embedded = f"{sentence[:cut]}\n{value}\n{sentence[cut:]}"  # its own line: not glued to a table's numbers
    tool_call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "charge", "arguments": json.dumps({"value": value, "note": "as asked"})},
            }
        ],
    }
    return [
        ("prompt", {"prompt": embedded}),
        ("system", {"system": f"Use {value} when the user asks for it.", "prompt": "hello"}),
        ("messages[1].content", {"messages": _messages({"content": "hi"}, {"role": "assistant", "content": embedded})}),
        ("messages[0].content", {"messages": _messages({"content": json.dumps({"config": {"value": value}})})}),
        ("messages[0].name", {"messages": _messages({"content": "hi", "name": value})}),
        (
            "messages[1].tool_calls",
            {"messages": _messages({"content": "pay"}, {"role": "assistant", "raw": json.dumps(tool_call)})},
        ),
        (
            "params.tools",
            {
                "prompt": "hi",
                "params": json.dumps(
                    {
                        "tools": [
                            {
                                "type": "function",
                                "function": {
                                    "name": "pay",
                                    "parameters": {
                                        "type": "object",
                                        "properties": {"v": {"type": "string", "default": value}},
                                    },
                                },
                            }
                        ]
                    }
                ),
            },
        ),
        ("params.user", {"prompt": "hi", "params": json.dumps({"user": value})}),
        ("params.stop", {"prompt": "hi", "params": json.dumps({"stop": ["END", value]})}),
        ("metadata.note", {"prompt": "hi", "metadata": json.dumps({"note": f"see {value}", "team": "ops"})}),
    ]


def card_positives(rng: random.Random, sentences: list[str]) -> list[Sample]:
    out = []
    spellings = [
        "card {n}",
        "{n}",
        "카드 번호 {n}입니다",
        "Kartennummer: {n}.",
        "numéro de carte {n}, exp 12/28",
        "{n} exp 12/28 cvv 123",
        "{n} 123",
        "pay with {n}!",
        "(card {n})",
        '"card": "{n}"',
        "卡号：{n}。",
    ]
    for issuer, prefixes, lengths in ISSUERS:
        for length in lengths:
            for groups in [(length,), *GROUPINGS[length]]:
                for sep in [""] if len(groups) == 1 else [" ", "-"]:
                    number = grouped(card_number(rng.choice(prefixes), length, rng), groups, sep)
                    shape = "-".join(map(str, groups)) + (
                        "" if len(groups) == 1 else f"/{'space' if sep == ' ' else 'hyphen'}"
                    )
                    spelled = rng.choice(spellings).format(n=number)
                    for place, item in placements(spelled, rng.choice(sentences), rng):
                        out.append(Sample(f"card:{issuer}/{length}/{shape}/{place}", "card", item, "card", place))
    # Numbers as JSON integers, where a tool argument or metadata holds them unquoted.
    for issuer, prefixes, lengths in ISSUERS:
        n = int(card_number(prefixes[0], lengths[0], rng))
        out.append(
            Sample(
                f"card:{issuer}/int/metadata",
                "card",
                {"prompt": "hi", "metadata": json.dumps({"card": n})},
                "card",
                "metadata.card",
            )
        )
    return out


def credential_positives(rng: random.Random, sentences: list[str]) -> list[Sample]:
    out = []
    templates = [
        "here is my key: {k}",
        "export OPENAI_API_KEY={k}",
        'client = Client(api_key="{k}")',
        "{k}",
        "config:\n  token: {k}\n",
        "the token '{k}' stopped working, why?",
    ]
    for name, value in credentials(rng):
        for place, item in placements(rng.choice(templates).format(k=value), rng.choice(sentences), rng):
            out.append(Sample(f"credential:{name}/{place}", "credential", item, "credential", place))
    return out


# -- look-alikes we write ----------------------------------------------------------------------------------
def lookalikes(rng: random.Random) -> list[Sample]:
    """Texts full of numbers and tokens that are neither cards nor secrets."""
    d = string.digits

    def n(k: int) -> str:
        return _token(rng, d, k)

    def luhn_no_issuer(length: int) -> str:
        return card_number(rng.choice("0179"), length, rng)

    def luhn_invalid_visa() -> str:
        valid = card_number("4", 16, rng)
        return valid[:-1] + str((int(valid[-1]) + 1) % 10)

    visa = card_number("4", 16, rng)
    texts = [
        f"On {2000 + rng.randrange(25)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} at 10:30:00Z, "
        f"then {rng.randrange(1, 29):02d}.{rng.randrange(1, 13):02d}.{2000 + rng.randrange(25)} and "
        f"{2000 + rng.randrange(25)}년 {rng.randrange(1, 13)}월 {rng.randrange(1, 29)}일 "
        f"제{rng.randrange(1, 999)}조 제{rng.randrange(1, 9)}항",
        f"ISBN 978-{rng.randrange(10)}-{n(3)}-{n(5)}-{rng.randrange(10)} and ISBN-13 978{n(10)}, ISSN {n(4)}-{n(4)}",
        f"Call +1 (415) 555-{n(4)}, +44 20 7946 {n(4)}, 010-{n(4)}-{n(4)} or +{n(12)}",
        f"IBAN DE{n(2)} {n(4)} {n(4)} {n(4)} {n(4)} {n(2)}, GB{n(2)} WEST {n(4)} {n(4)} {n(4)} {n(2)}, BIC DEUTDEFF",
        f"Order #{n(3)}-{n(4)}-{n(4)}, invoice INV-2024-{n(6)}, PO {n(10)}, tracking 1Z{n(3)}AA{n(10)}, "
        f"USPS {n(4)} {n(4)} {n(4)} {n(4)} {n(4)} {n(2)}",
        f"Versions 1.{rng.randrange(30)}.{rng.randrange(30)}, "
        f"v{2000 + rng.randrange(25)}.{rng.randrange(1, 13)}.{n(2)}, "
        f"build {n(8)}.{n(6)}",
        f"uuid {'-'.join(_token(rng, '0123456789abcdef', k) for k in (8, 4, 4, 4, 12))}, sha256 "
        f"{_token(rng, '0123456789abcdef', 64)}, commit {_token(rng, '0123456789abcdef', 40)}",
        "| team | q1 | q2 | q3 | q4 |\n" + "\n".join(f"| t{i} | {n(2)} | {n(2)} | {n(3)} | {n(2)} |" for i in range(8)),
        "scores: " + " ".join(n(rng.choice([1, 2, 3])) for _ in range(60)),
        "year  pop   gdp   idx\n" + "\n".join(f"{1990 + i} {n(4)} {n(5)} {n(3)}" for i in range(12)),
        f"timestamps {n(13)} {n(10)} and ms since epoch 17{n(11)}",
        f"a luhn-valid number with no issuer {luhn_no_issuer(16)} and {luhn_no_issuer(15)}",
        f"a Visa-like number that fails Luhn: {luhn_invalid_visa()}",
        f"inside a longer run: {visa}{n(4)} and {n(4)}{visa}",
        f"inside words: ID{visa}, ref_{visa}, x{visa}y",
        f"hyphenated to other numbers: 12-{visa} and {visa}-77",
        f"decimals: 0.{visa} and {visa[:8]}.{visa[8:]}",
        f"mixed separators: {visa[:4]} {visa[4:8]}-{visa[8:12]} {visa[12:]}",
        f"pi is 3.{n(40)}",
        f"account {n(4)}-{n(4)}-{n(4)}, sort code {n(2)}-{n(2)}-{n(2)}, routing {n(9)}",
        "Stripe publishable key pk_live_" + _token(rng, ALNUM, 24) + " and pk_test_" + _token(rng, ALNUM, 24),
        "AWS docs use AKIA" + "IOSFODNN7EXAMPLE and wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY as examples",
        "set OPENAI_API_KEY=sk-... or sk-proj-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX; ANTHROPIC_API_KEY=<your key>",
        "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx and SLACK_TOKEN=xoxb-your-token-here",
        "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(rng.randbytes(270)).decode() + "\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\n" + base64.b64encode(rng.randbytes(600)).decode() + "\n-----END CERTIFICATE-----",
        "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY----- (paste yours here)",
        "the jwt.io example eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        + _b64url({"sub": "1234567890", "name": "John Doe", "iat": 1516239022})
        + "."
        + _token(rng, B64URL, 43),
        "not a jwt: eyJ" + _token(rng, B64URL, 20) + "." + _token(rng, B64URL, 20) + "." + _token(rng, B64URL, 20),
        "base64 blob " + base64.b64encode(rng.randbytes(300)).decode(),
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1"
        + _token(rng, B64, 54)
        + "==",
        "the task-list and ask-project columns; sk-learn and disk-" + _token(rng, ALNUM, 40),
        "AIza is how a Google key starts; AIzaShort",
        f"serial numbers: SN{n(16)}, IMEI {n(15)}, MAC 00:1A:2B:{n(2)}:{n(2)}:{n(2)}",
        f"coordinates 37.{n(14)}, -122.{n(14)}",
    ]
    return [Sample(f"lookalike:{i}", "lookalike", {"prompt": t}, None) for i, t in enumerate(texts)]


def lookalike_rounds(rounds: int = 12) -> list[Sample]:
    """The look-alikes drawn `rounds` times with different random digits."""
    out = []
    for r in range(rounds):
        for s in lookalikes(random.Random(SEED + r)):
            out.append(Sample(f"{s.name}/{r}", s.category, s.item, None))
    return out


# -- the set -----------------------------------------------------------------------------------------------
def labelled_set() -> list[Sample]:
    """Every labelled sample, in a fixed order."""
    rng = random.Random(SEED)
    negatives = _realfile_items(rng) + _text_items(rng) + lookalike_rounds()
    sentences = [s.item["prompt"][:400] for s in negatives if s.item.get("prompt") and len(s.item["prompt"]) > 80]
    positives = card_positives(rng, sentences) + credential_positives(rng, sentences)
    return negatives + positives


ITEM_COLUMNS = {
    "system": pl.String,
    "prompt": pl.String,
    "messages": pl.List(MESSAGE),
    "params": pl.String,
    "metadata": pl.String,
}


def items_frame(samples: list[Sample], *, raw: bool = True) -> pl.DataFrame:
    """The samples as an item table (the columns the guard scans); without `raw`, messages lack that field."""
    rows = [{c: s.item.get(c) for c in ITEM_COLUMNS} for s in samples]
    frame = pl.DataFrame(rows, schema=ITEM_COLUMNS)
    if raw:
        return frame
    inner = pl.Struct({"role": pl.String, "content": pl.String, "name": pl.String})
    return frame.with_columns(
        pl.col("messages")
        .list.eval(pl.struct(pl.element().struct.field("role", "content", "name")))
        .cast(pl.List(inner))
    )
