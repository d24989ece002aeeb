"""The error hierarchy: one stable code per class, documented in the module's tree and the README's table."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

import batchrouter
from batchrouter.core import control, errors
from batchrouter.core.errors import BatchRouterError

README = Path(__file__).resolve().parents[2] / "README.md"


def tree() -> list[type[BatchRouterError]]:
    found: list[type[BatchRouterError]] = [BatchRouterError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def declared_in_errors() -> list[type[BatchRouterError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BatchRouterError)]


def tree_line(cls: type[BatchRouterError]) -> str:
    assert errors.__doc__ is not None
    lines = [line for line in errors.__doc__.splitlines() if re.search(rf"[\s─]{cls.__name__}\s", line)]
    assert len(lines) == 1, f"{cls.__name__} should have exactly one line in the core.errors docstring tree"
    return lines[0]


def readme_rows() -> dict[str, tuple[str, int, bool]]:
    text = README.read_text()
    assert "\n## Errors\n" in text, "README.md needs an 'Errors' section"
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, int, bool]] = {}
    for match in re.finditer(r"^\| `([a-z_]+)` \| (\d{3}) \| (yes|no) \| `(\w+)` \|", section, re.MULTILINE):
        code, status, retryable, name = match.groups()
        rows[name] = (code, int(status), retryable == "yes")
    return rows


def test_every_batchrouter_error_in_the_package_is_declared_in_core_errors() -> None:
    for module in pkgutil.walk_packages(batchrouter.__path__, "batchrouter."):
        if not module.name.endswith(".__main__"):  # importing one runs the program
            importlib.import_module(module.name)
    strays = [f"{c.__module__}.{c.__qualname__}" for c in tree() if c.__module__ != errors.__name__]
    assert strays == []
    assert set(tree()) == set(declared_in_errors())


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
def test_each_error_has_a_snake_case_code_an_http_status_retryability_and_a_docstring(
    cls: type[BatchRouterError],
) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", cls.code)
    assert cls.http_status in {s.value for s in HTTPStatus} and 400 <= cls.http_status <= 599
    assert isinstance(cls.retryable, bool)
    assert "__doc__" in cls.__dict__ and (cls.__doc__ or "").strip()


def test_codes_are_unique_unless_the_tree_says_the_class_shares_one() -> None:
    by_code: dict[str, list[str]] = {}
    for cls in tree():
        shared = "(shares)" in tree_line(cls)
        if "code" not in cls.__dict__:
            assert shared, f"{cls.__name__} inherits code {cls.code!r}: mark it '(shares)' in the tree"
        if not shared:
            by_code.setdefault(cls.code, []).append(cls.__name__)
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}
    sharing = [c for c in tree() if "(shares)" in tree_line(c)]
    assert all(c.code in by_code for c in sharing), "a shared code is owned by one unshared class"


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
def test_the_docstring_tree_shows_each_class_with_its_code_and_status(cls: type[BatchRouterError]) -> None:
    line = tree_line(cls)
    assert re.search(rf"\s{cls.code}(\s|$)", line) and f" {cls.http_status}" in line
    assert ("retryable" in line) == cls.retryable


def test_the_readme_table_lists_every_class_with_its_code_status_and_retryability() -> None:
    rows = readme_rows()
    assert rows == {c.__name__: (c.code, c.http_status, c.retryable) for c in tree()}


def test_retryability_is_in_the_type() -> None:
    assert errors.TransientError.retryable and errors.RateLimitedError.retryable
    assert not errors.TerminalError.retryable and not errors.RefusedError.retryable
    assert errors.ServiceUnavailable.retryable and errors.DatabaseBusy.retryable and errors.RateLimited.retryable
    assert not errors.InsufficientCredits.retryable


def test_a_provider_error_keeps_its_failure_code_as_data_beside_the_class_code() -> None:
    err = errors.RateLimitedError("rate_limited", "slow down", retry_after_s=3.0)
    assert (err.code, type(err).code, err.http_status, err.retryable) == (
        "rate_limited",
        "provider_rate_limited",
        429,
        True,
    )


def test_access_refusals_are_access_errors_and_the_generic_refusal_at_once() -> None:
    missing = errors.MissingApiKey("send a key")
    assert isinstance(missing, errors.AccessError) and isinstance(missing, errors.Unauthenticated)
    assert (missing.code, missing.status, missing.message) == ("unauthenticated", 401, "send a key")
    assert isinstance(errors.KeyNotFound("no key"), errors.NotFound)
    assert isinstance(errors.LinkNotFound("gone"), errors.LinkError)
    assert isinstance(errors.AmountError("bad"), ValueError)


def sample(cls: type[BatchRouterError]) -> BatchRouterError:
    """An instance of `cls` with every field set, whatever its constructor."""
    special: dict[type, Any] = {
        errors.ManifestError: lambda: errors.ManifestError("items.csv", "no prompt column", "add one"),
        errors.InsufficientCredits: lambda: errors.InsufficientCredits("acme", 5_000_000, 1_000_000),
        errors.RateLimited: lambda: errors.RateLimited("too many", retry_after_s=2.5),
        errors.RateLimitedError: lambda: errors.RateLimitedError("rate_limited", "slow", retry_after_s=7.0),
        errors.RefusedError: lambda: errors.RefusedError(
            "refused", "declined", input_tokens=3, output_tokens=4, request_id="req_1"
        ),
        errors.WireRejection: lambda: errors.WireRejection("bad field", status=404, kind="not_found", param="model"),
    }
    if cls in special:
        made: BatchRouterError = special[cls]()
        return made
    if issubclass(cls, errors.ProviderError):
        return cls("timeout", "no answer in 120 s", status=504)
    return cls(f"{cls.__name__} happened; do something about it")


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
def test_a_round_trip_through_the_control_service_encoding_keeps_class_and_fields(cls: type[BatchRouterError]) -> None:
    original = sample(cls)
    wire = json.loads(json.dumps(control.encode_error(original)))
    back = control.decode_error(wire, "test")
    assert isinstance(back, BatchRouterError) and type(back) is cls
    assert str(back) == str(original)
    assert vars(back) == vars(original)
    assert (back.code, back.http_status, back.retryable) == (original.code, original.http_status, original.retryable)
