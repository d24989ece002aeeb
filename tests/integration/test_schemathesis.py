"""Property-based API checks: schemathesis generates requests from the served /openapi.json.

The app is called in-process through its ASGI interface with a valid owner key holding every scope;
whatever schemathesis sends, in or out of the schema, the API must answer without a server error,
with a status code, a content type and a body the document describes for that operation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.openapi.checks import JsonSchemaError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from batchrouter.access.accounts import Accounts
from batchrouter.api import create_app, endpoints
from batchrouter.core.config import load_settings
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

ALL_SCOPES = ["batches:read", "batches:write", "credits:read", "credits:write", "admin"]
OPERATIONS = [(e.method, e.path) for e in endpoints()]  # the operations the document lists


def no_server_error_but_a_documented_unconfigured(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """Never a 5xx, except the documented 503 of an operation needing a setting this server lacks (Stripe)."""
    if response.status_code == 503 and "503" in case.operation.definition.raw.get("responses", {}):
        assert response.json()["error"]["code"] in ("config_error", "not_configured"), response.text
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error_but_a_documented_unconfigured, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


def test_checkout_without_stripe_keys_is_the_documented_503(served: tuple[schemathesis.BaseSchema, str]) -> None:
    schema, key = served
    case = schema["/v1/credits/checkout"]["POST"].Case(body={"pack": "team"})
    response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "config_error")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[schemathesis.BaseSchema, str]]:
    """The schema as the app serves it at /openapi.json, and an owner key holding every scope."""
    root = tmp_path_factory.mktemp("schemathesis")
    with pytest.MonkeyPatch.context() as mp:
        # A configured deployment: the webhook secret is set (without it the webhook answers 503 by
        # design); no Stripe secret key, so checkout never reaches the network.
        mp.setenv("STRIPE_WEBHOOK_SECRET", "whsec_schemathesis")
        mp.delenv("STRIPE_SECRET_KEY", raising=False)
        config = load_settings(
            database=str(root / "batchrouter.duckdb"),
            storage={"root": str(root / "bucket")},
            api={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000},
        )
        accounts = Accounts(config.database)
        accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
        key, _ = accounts.create_key("acme", name="fuzz", scopes=ALL_SCOPES, created_by="owner@acme.test", actor="t")
        Ledger(config.database).grant("acme", 1_000_000, key="grant")
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(config)), key


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_generated_request_gets_a_documented_answer_and_never_a_server_error(
    served: tuple[schemathesis.BaseSchema, str], method: str, path: str
) -> None:
    schema, key = served
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=15, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    check()


def test_a_server_error_would_be_caught(
    served: tuple[schemathesis.BaseSchema, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a handler that raises answers 500, which not_a_server_error rejects."""
    schema, key = served

    def explode(self: Ledger, workspace: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Ledger, "balance", explode)
    case = schema["/v1/credits"]["GET"].Case()
    with pytest.raises(FailureGroup) as caught:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error])
    assert [type(e) for e in caught.value.exceptions] == [ServerError]


def test_a_response_the_document_does_not_describe_would_be_caught(
    served: tuple[schemathesis.BaseSchema, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The conformance check above can fail: a document promising a field the answer lacks is rejected."""
    schema, key = served
    document = copy.deepcopy(schema.raw_schema)
    answer = document["paths"]["/v1/credits"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    balance = document["components"]["schemas"][answer["$ref"].rsplit("/", 1)[1]]
    balance["properties"]["overdraft_usd_micros"] = {"type": "integer"}
    balance["required"].append("overdraft_usd_micros")
    promised = schemathesis.openapi.from_dict(document)
    promised.app = schema.app
    case = promised["/v1/credits"]["GET"].Case()
    with pytest.raises(FailureGroup) as caught:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=[response_schema_conformance])
    assert [type(e) for e in caught.value.exceptions] == [JsonSchemaError]
