"""Who may call what: the HTTP API's endpoint x role x key scope matrix, workspaces kept apart,
authentication failures, error bodies, suspension and per-key rate limits.

The expectations come from the README's two tables, written out below, not from the code's own
tables: the tests assert that the app agrees with the documentation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from batchrouter.access.accounts import Accounts
from batchrouter.api import create_app, endpoints
from batchrouter.core.config import Settings, load_settings
from batchrouter.money.ledger import Ledger

# -- the README's tables ---------------------------------------------------------------------------
ROLES = ("owner", "admin", "member", "viewer")
SCOPES = ("batches:read", "batches:write", "credits:read", "credits:write", "admin")

# "Roles and the actions they allow".
ROLE_ALLOWS: dict[str, set[str]] = {
    "batches:read": {"owner", "admin", "member", "viewer"},
    "batches:write": {"owner", "admin", "member"},
    "credits:read": {"owner", "admin", "member", "viewer"},
    "credits:write": {"owner", "admin"},
    "members:read": {"owner", "admin", "member", "viewer"},
    "members:write": {"owner", "admin"},
    "keys:read": {"owner", "admin", "member"},
    "keys:write": {"owner", "admin", "member"},
    "webhooks:read": {"owner", "admin", "member"},
    "webhooks:write": {"owner", "admin"},
    "workspace:admin": {"owner"},
}

# "method and path" -> (key scope, role action), for every endpoint that needs a key.
KEYED_ENDPOINTS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/v1/quotes"): ("batches:write", "batches:write"),
    ("GET", "/v1/quotes/{quote_id}"): ("batches:read", "batches:read"),
    ("POST", "/v1/batches"): ("batches:write", "batches:write"),
    ("GET", "/v1/batches"): ("batches:read", "batches:read"),
    ("GET", "/v1/batches/{batch_id}"): ("batches:read", "batches:read"),
    ("POST", "/v1/batches/{batch_id}/cancel"): ("batches:write", "batches:write"),
    ("GET", "/v1/batches/{batch_id}/links"): ("batches:read", "batches:read"),
    ("POST", "/v1/files"): ("batches:write", "batches:write"),
    ("GET", "/v1/files"): ("batches:read", "batches:read"),
    ("GET", "/v1/files/{file_id}"): ("batches:read", "batches:read"),
    ("GET", "/v1/files/{file_id}/content"): ("batches:read", "batches:read"),
    ("DELETE", "/v1/files/{file_id}"): ("batches:write", "batches:write"),
    ("GET", "/v1/credits"): ("credits:read", "credits:read"),
    ("GET", "/v1/credits/history"): ("credits:read", "credits:read"),
    ("POST", "/v1/credits/checkout"): ("credits:write", "credits:write"),
    ("GET", "/v1/members"): ("admin", "members:read"),
    ("PUT", "/v1/members/{email}"): ("admin", "members:write"),
    ("DELETE", "/v1/members/{email}"): ("admin", "members:write"),
    ("GET", "/v1/keys"): ("admin", "keys:read"),
    ("POST", "/v1/keys"): ("admin", "keys:write"),
    ("POST", "/v1/keys/{key_id}/revoke"): ("admin", "keys:write"),
    ("POST", "/v1/keys/{key_id}/rotate"): ("admin", "keys:write"),
    ("GET", "/v1/webhooks"): ("admin", "webhooks:read"),
    ("POST", "/v1/webhooks"): ("admin", "webhooks:write"),
    ("DELETE", "/v1/webhooks/{endpoint_id}"): ("admin", "webhooks:write"),
    ("POST", "/v1/messages/batches"): ("batches:write", "batches:write"),
    ("GET", "/v1/messages/batches"): ("batches:read", "batches:read"),
    ("GET", "/v1/messages/batches/{batch_id}"): ("batches:read", "batches:read"),
    ("POST", "/v1/messages/batches/{batch_id}/cancel"): ("batches:write", "batches:write"),
    ("GET", "/v1/messages/batches/{batch_id}/results"): ("batches:read", "batches:read"),
    ("DELETE", "/v1/messages/batches/{batch_id}"): ("batches:write", "batches:write"),
}
# Endpoints with their own authentication (or none).
UNKEYED_ENDPOINTS = {
    ("GET", "/v1/artifacts/{workspace}/{batch_id}/{artifact}"),
    ("POST", "/v1/stripe/webhook"),
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
}

# One request per keyed endpoint that changes nothing when it is allowed (unknown ids, invalid
# bodies), with the status it then gets: (url, request arguments, status when allowed).
NO_QUOTE = "q_" + "0" * 24
NO_FILE = "file-" + "0" * 24
AV = {"anthropic-version": "2023-06-01"}
PROBES: dict[tuple[str, str], tuple[str, dict[str, Any], int]] = {
    ("POST", "/v1/quotes"): ("/v1/quotes?filename=m.csv", {"content": b""}, 422),
    ("GET", "/v1/quotes/{quote_id}"): (f"/v1/quotes/{NO_QUOTE}", {}, 404),
    ("POST", "/v1/batches"): ("/v1/batches", {"json": {"quote_id": NO_QUOTE}}, 404),
    ("GET", "/v1/batches"): ("/v1/batches", {}, 200),
    ("GET", "/v1/batches/{batch_id}"): ("/v1/batches/no-such-batch", {}, 404),
    ("POST", "/v1/batches/{batch_id}/cancel"): ("/v1/batches/no-such-batch/cancel", {}, 404),
    ("GET", "/v1/batches/{batch_id}/links"): ("/v1/batches/no-such-batch/links", {}, 404),
    ("POST", "/v1/files"): ("/v1/files", {"content": b"not a form"}, 400),  # OpenAI's dialect: 400, not 422
    ("GET", "/v1/files"): ("/v1/files", {}, 200),
    ("GET", "/v1/files/{file_id}"): (f"/v1/files/{NO_FILE}", {}, 404),
    ("GET", "/v1/files/{file_id}/content"): (f"/v1/files/{NO_FILE}/content", {}, 404),
    ("DELETE", "/v1/files/{file_id}"): (f"/v1/files/{NO_FILE}", {}, 404),
    ("GET", "/v1/credits"): ("/v1/credits", {}, 200),
    ("GET", "/v1/credits/history"): ("/v1/credits/history", {}, 200),
    ("POST", "/v1/credits/checkout"): ("/v1/credits/checkout", {"json": {}}, 422),
    ("GET", "/v1/members"): ("/v1/members", {}, 200),
    ("PUT", "/v1/members/{email}"): ("/v1/members/nobody@example.com", {"json": {"role": "emperor"}}, 422),
    ("DELETE", "/v1/members/{email}"): ("/v1/members/nobody@example.com", {}, 404),
    ("GET", "/v1/keys"): ("/v1/keys", {}, 200),
    ("POST", "/v1/keys"): ("/v1/keys", {"json": {}}, 422),
    ("POST", "/v1/keys/{key_id}/revoke"): ("/v1/keys/no-such-key/revoke", {}, 404),
    ("POST", "/v1/keys/{key_id}/rotate"): ("/v1/keys/no-such-key/rotate", {"json": {}}, 404),
    ("GET", "/v1/webhooks"): ("/v1/webhooks", {}, 200),
    ("POST", "/v1/webhooks"): ("/v1/webhooks", {"json": {}}, 422),
    ("DELETE", "/v1/webhooks/{endpoint_id}"): ("/v1/webhooks/no-such-endpoint", {}, 404),
    # Anthropic's dialect: an invalid request is 400
    ("POST", "/v1/messages/batches"): ("/v1/messages/batches", {"json": {"requests": []}, "headers": AV}, 400),
    ("GET", "/v1/messages/batches"): ("/v1/messages/batches", {"headers": AV}, 200),
    ("GET", "/v1/messages/batches/{batch_id}"): ("/v1/messages/batches/no-such-batch", {"headers": AV}, 404),
    ("POST", "/v1/messages/batches/{batch_id}/cancel"): (
        "/v1/messages/batches/no-such-batch/cancel",
        {"headers": AV},
        404,
    ),  # fmt: skip
    ("GET", "/v1/messages/batches/{batch_id}/results"): (
        "/v1/messages/batches/no-such-batch/results",
        {"headers": AV},
        404,
    ),  # fmt: skip
    ("DELETE", "/v1/messages/batches/{batch_id}"): ("/v1/messages/batches/no-such-batch", {"headers": AV}, 404),
}
ENDPOINT_IDS = [f"{m} {p}" for m, p in KEYED_ENDPOINTS]
REFERENCE = re.compile(r"^err_[0-9a-f]{16}$")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(client: TestClient, method: str, url: str, key: str | None, **kwargs: Any) -> Any:
    headers = {**kwargs.pop("headers", {}), **(bearer(key) if key else {})}
    return client.request(method, url, headers=headers, **kwargs)


def probe(client: TestClient, endpoint: tuple[str, str], key: str | None) -> Any:
    url, kwargs, _ = PROBES[endpoint]
    return call(client, endpoint[0], url, key, **kwargs)


def quiet_settings(root: Path, **overrides: Any) -> Settings:
    """Settings in `root`, with a rate limit no test here reaches unless it means to."""
    api = {"rate_limit_per_minute": 100_000, "rate_limit_burst": 100_000, **overrides.pop("api", {})}
    return load_settings(database=str(root / "batchrouter.duckdb"), storage={"root": str(root / "bucket")}, api=api,
                         **overrides)  # fmt: skip


# -- one shared world for the read-only checks -------------------------------------------------------
@dataclass
class World:
    settings: Settings
    client: TestClient
    accounts: Accounts
    # (role, scope) -> a key of a member with that role holding exactly that scope / every scope but it
    exact: dict[tuple[str, str], str] = field(default_factory=dict)
    all_but: dict[tuple[str, str], str] = field(default_factory=dict)
    owner_key: str = ""
    owner_key_id: str = ""
    special: dict[str, str] = field(default_factory=dict)  # keys in a given state (revoked, expired, ...)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = quiet_settings(tmp_path_factory.mktemp("access"))
    accounts = Accounts(settings.database)
    for role in ROLES:
        accounts.set_member("acme", f"{role}@acme.test", role, actor="test")
    accounts.set_member("acme", "leaver@acme.test", "admin", actor="test")
    with TestClient(create_app(settings)) as client:
        w = World(settings, client, accounts)
        for role in ROLES:
            for scope in SCOPES:
                by = f"{role}@acme.test"
                w.exact[role, scope], _ = accounts.create_key("acme", name=f"{role}-{scope}", scopes=[scope],
                                                              created_by=by, actor="test")  # fmt: skip
                others = [s for s in SCOPES if s != scope]
                w.all_but[role, scope], _ = accounts.create_key("acme", name=f"{role}-not-{scope}", scopes=others,
                                                                created_by=by, actor="test")  # fmt: skip
        w.owner_key, owner = accounts.create_key("acme", name="all", scopes=list(SCOPES), created_by="owner@acme.test",
                                                 actor="test")  # fmt: skip
        w.owner_key_id = owner.key_id

        def make(name: str, by: str = "owner@acme.test", expires: timedelta | None = None) -> tuple[str, str]:
            full, key = accounts.create_key("acme", name=name, scopes=list(SCOPES), created_by=by, actor="test",
                                            expires_in=expires)  # fmt: skip
            return full, key.key_id

        w.special["revoked"], revoked_id = make("revoked")
        accounts.revoke_key("acme", revoked_id, actor="test")
        w.special["expired"], _ = make("expired", expires=timedelta(seconds=-1))
        w.special["creator removed"], _ = make("leaver", by="leaver@acme.test")
        accounts.remove_member("acme", "leaver@acme.test", actor="test")
        yield w


# -- the tables ------------------------------------------------------------------------------------------
def test_the_app_declares_the_readme_scope_and_action_for_every_keyed_endpoint(world: World) -> None:
    declared = {(e.method, e.path): (e.scope, e.action) for e in endpoints() if e.scope}
    assert declared == KEYED_ENDPOINTS


def test_only_the_webhook_downloads_health_and_openapi_need_no_key(world: World) -> None:
    unkeyed = {(e.method, e.path) for e in endpoints() if e.scope is None}
    assert unkeyed == UNKEYED_ENDPOINTS


def test_the_served_openapi_document_lists_every_endpoint_with_its_scope(world: World) -> None:
    doc = world.client.get("/openapi.json").json()
    listed = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert listed == set(KEYED_ENDPOINTS) | UNKEYED_ENDPOINTS
    for (method, path), (scope, action) in KEYED_ENDPOINTS.items():
        op = doc["paths"][path][method.lower()]
        assert op["security"] == [{"apiKey": []}]
        assert f"`{scope}`" in op["description"] and f"`{action}`" in op["description"]


# -- the matrix: endpoint x role x scope ---------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", list(KEYED_ENDPOINTS), ids=ENDPOINT_IDS)
def test_a_key_holding_the_scope_is_allowed_exactly_when_the_role_allows_the_action(
    world: World, endpoint: tuple[str, str], role: str
) -> None:
    scope, action = KEYED_ENDPOINTS[endpoint]
    response = probe(world.client, endpoint, world.exact[role, scope])
    if role in ROLE_ALLOWS[action]:
        assert response.status_code not in (401, 403), response.text
        assert response.status_code == PROBES[endpoint][2], response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", list(KEYED_ENDPOINTS), ids=ENDPOINT_IDS)
def test_a_key_holding_every_scope_but_the_needed_one_is_forbidden(
    world: World, endpoint: tuple[str, str], role: str
) -> None:
    scope, _ = KEYED_ENDPOINTS[endpoint]
    response = probe(world.client, endpoint, world.all_but[role, scope])
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"


def test_a_forbidden_answer_names_the_scope_and_action_needed(world: World) -> None:
    response = probe(world.client, ("POST", "/v1/keys"), world.exact["viewer", "admin"])
    message = response.json()["error"]["message"]
    assert "admin" in message and "keys:write" in message and "viewer" in message


# -- authentication ------------------------------------------------------------------------------------------
UNAUTHENTICATED = {
    "no header": (lambda w: {}, "unauthenticated"),
    "not a bearer token": (lambda w: {"Authorization": "Basic dXNlcjpwYXNz"}, "unauthenticated"),
    "empty bearer token": (lambda w: {"Authorization": "Bearer "}, "unauthenticated"),
    "not a br_ key": (lambda w: bearer("sk-live-123456"), "unauthenticated"),
    "malformed br_ key": (lambda w: bearer("br_nounderscoreafter"), "unauthenticated"),
    "unknown prefix": (lambda w: bearer("br_000000000000_" + w.owner_key.split("_", 2)[2]), "invalid_key"),
    "wrong secret": (lambda w: bearer("br_" + w.owner_key.split("_", 2)[1] + "_" + "x" * 32), "invalid_key"),
    "revoked key": (lambda w: bearer(w.special["revoked"]), "key_revoked"),
    "expired key": (lambda w: bearer(w.special["expired"]), "key_expired"),
    "creator removed from the workspace": (lambda w: bearer(w.special["creator removed"]), "key_owner_removed"),
}


@pytest.mark.parametrize("case", list(UNAUTHENTICATED))
def test_an_unusable_key_gets_401_with_a_stable_code(world: World, case: str) -> None:
    headers, code = UNAUTHENTICATED[case]
    for _ in range(2):  # the same answer every time
        response = world.client.get("/v1/credits", headers=headers(world))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == code


def test_a_valid_key_is_accepted(world: World) -> None:
    assert world.client.get("/v1/credits", headers=bearer(world.owner_key)).status_code == 200


@pytest.mark.parametrize("endpoint", list(KEYED_ENDPOINTS), ids=ENDPOINT_IDS)
def test_every_keyed_endpoint_answers_401_without_a_key(world: World, endpoint: tuple[str, str]) -> None:
    response = probe(world.client, endpoint, None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_a_wrong_secret_is_refused_like_an_unknown_prefix(world: World) -> None:
    """Same status, code and message: the answer does not reveal which prefixes exist."""
    known = world.client.get("/v1/credits", headers=UNAUTHENTICATED["wrong secret"][0](world)).json()["error"]
    unknown = world.client.get("/v1/credits", headers=UNAUTHENTICATED["unknown prefix"][0](world)).json()["error"]
    assert (known["code"], known["message"]) == (unknown["code"], unknown["message"])


# -- error bodies -----------------------------------------------------------------------------------------------
ERRORS: dict[str, tuple[str, str, dict[str, Any], str | None, int, str]] = {
    # name: (method, url, request arguments, key (None: none; else a World attribute), status, code)
    "401 no key": ("GET", "/v1/credits", {}, None, 401, "unauthenticated"),
    "403 forbidden": ("GET", "/v1/keys", {}, "viewer_admin", 403, "forbidden"),
    "404 unknown route": ("GET", "/v1/nothing-here", {}, "owner_key", 404, "not_found"),
    "404 unknown batch": ("GET", "/v1/batches/no-such-batch", {}, "owner_key", 404, "not_found"),
    "405 wrong method": ("DELETE", "/v1/credits", {}, "owner_key", 405, "method_not_allowed"),
    "422 invalid body": ("POST", "/v1/batches", {"json": {"quote_id": "nope"}}, "owner_key", 422, "invalid_request"),
    "422 unusable manifest": ("POST", "/v1/quotes?filename=m.csv", {"content": b"a,b\n1,2\n"}, "owner_key", 422,
                              "unusable_manifest"),
    "409 last owner": ("DELETE", "/v1/members/owner@acme.test", {}, "owner_key", 409, "last_owner"),
}  # fmt: skip


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "batchrouter.api")


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_error_body_has_code_message_and_a_reference_found_in_the_server_log(
    world: World, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    method, url, kwargs, key_name, status, code = ERRORS[case]
    key = world.exact["viewer", "admin"] if key_name == "viewer_admin" else getattr(world, key_name or "", None)
    with caplog.at_level(logging.INFO, logger="batchrouter.api"):
        response = call(world.client, method, url, key, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "type", "param", "reference"}  # OpenAI's error object too
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert REFERENCE.match(body["error"]["reference"])
    assert body["error"]["reference"] in logged(caplog)


def test_an_unexpected_failure_answers_500_with_a_logged_reference_and_no_details(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: Ledger, workspace: str) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Ledger, "balance", explode)
    with caplog.at_level(logging.INFO, logger="batchrouter.api"):
        response = world.client.get("/v1/credits", headers=bearer(world.owner_key))
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert "secret internal detail" not in response.text
    assert REFERENCE.match(error["reference"])
    assert error["reference"] in logged(caplog)
    assert "secret internal detail" in logged(caplog)  # the operator sees what happened


# -- workspaces are kept apart ------------------------------------------------------------------------------
CSV = b"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,Say this is a test!,100\n"


@dataclass
class TwoWorkspaces:
    client: TestClient
    accounts: Accounts
    ledger: Ledger
    settings: Settings
    a_key: str
    a_key_id: str
    a_quote: str
    a_batch: str
    a_webhook: str
    b_key: str


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoWorkspaces]:
    """Workspace alpha with members, a key, a quote, a reserved batch and a webhook endpoint; workspace beta
    with an owner key."""
    settings = quiet_settings(tmp_path_factory.mktemp("two"), delivery={"allow_private_endpoints": True})
    accounts, ledger = Accounts(settings.database), Ledger(settings.database)
    accounts.set_member("alpha", "ana@alpha.test", "owner", actor="test")
    accounts.set_member("alpha", "vic@alpha.test", "viewer", actor="test")
    accounts.set_member("beta", "bob@beta.test", "owner", actor="test")
    a_key, a = accounts.create_key("alpha", name="a", scopes=list(SCOPES), created_by="ana@alpha.test", actor="t")
    b_key, _ = accounts.create_key("beta", name="b", scopes=list(SCOPES), created_by="bob@beta.test", actor="t")
    ledger.grant("alpha", 5_000_000, key="alpha-grant")
    with TestClient(create_app(settings)) as client:  # executor "sensor": nothing runs in the background
        quote = client.post("/v1/quotes?filename=m.csv", content=CSV, headers=bearer(a_key)).json()["quote_id"]
        batch = client.post("/v1/batches", json={"quote_id": quote}, headers=bearer(a_key))
        assert batch.status_code == 201, batch.text
        webhook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=bearer(a_key))
        assert webhook.status_code == 201, webhook.text
        yield TwoWorkspaces(client, accounts, ledger, settings, a_key, a.key_id, quote, batch.json()["batch_id"],
                            webhook.json()["endpoint_id"], b_key)  # fmt: skip


def assert_alpha_untouched(two: TwoWorkspaces) -> None:
    assert two.client.get("/v1/credits", headers=bearer(two.a_key)).status_code == 200
    key = next(k for k in two.accounts.keys("alpha") if k.key_id == two.a_key_id)
    assert (key.revoked_at, key.expires_at) == (None, None)
    assert [h.status for h in two.ledger.batch_holds(two.a_batch)] == ["held"]
    assert not (Path(two.settings.storage.root) / "batches" / two.a_batch / "cancel.json").exists()
    assert two.accounts.role("alpha", "ana@alpha.test") == "owner"
    assert two.accounts.role("alpha", "vic@alpha.test") == "viewer"
    webhooks = two.client.get("/v1/webhooks", headers=bearer(two.a_key)).json()["webhooks"]
    assert [w["endpoint_id"] for w in webhooks] == [two.a_webhook]


CROSS = {
    "read A's quote": ("GET", "/v1/quotes/{quote}", {}),
    "create a batch from A's quote": ("POST", "/v1/batches", {"json": {"quote_id": "{quote}"}}),
    "read A's batch": ("GET", "/v1/batches/{batch}", {}),
    "cancel A's batch": ("POST", "/v1/batches/{batch}/cancel", {}),
    "get links to A's batch": ("GET", "/v1/batches/{batch}/links", {}),
    "remove A's owner": ("DELETE", "/v1/members/ana@alpha.test", {}),
    "revoke A's key": ("POST", "/v1/keys/{key_id}/revoke", {}),
    "rotate A's key": ("POST", "/v1/keys/{key_id}/rotate", {"json": {"grace_hours": 0}}),
    "remove A's webhook endpoint": ("DELETE", "/v1/webhooks/{webhook}", {}),
}


@pytest.mark.parametrize("case", list(CROSS))
def test_a_key_of_another_workspace_gets_404_and_changes_nothing(two: TwoWorkspaces, case: str) -> None:
    method, url, kwargs = CROSS[case]
    ids = {"quote": two.a_quote, "batch": two.a_batch, "key_id": two.a_key_id, "webhook": two.a_webhook}
    if "json" in kwargs:
        kwargs = {"json": {k: v.format(**ids) if isinstance(v, str) else v for k, v in kwargs["json"].items()}}
    response = call(two.client, method, url.format(**ids), two.b_key, **kwargs)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    assert_alpha_untouched(two)


def test_the_same_requests_with_the_owning_workspace_key_are_not_404(two: TwoWorkspaces) -> None:
    """The 404s above come from the workspace boundary, not from wrong ids."""
    h = bearer(two.a_key)
    assert two.client.get(f"/v1/quotes/{two.a_quote}", headers=h).status_code == 200
    assert two.client.get(f"/v1/batches/{two.a_batch}", headers=h).status_code == 200
    assert two.client.post("/v1/batches", json={"quote_id": two.a_quote}, headers=h).status_code == 200
    assert two.a_key_id in {k["key_id"] for k in two.client.get("/v1/keys", headers=h).json()["keys"]}


def test_lists_of_another_workspace_never_include_its_items(two: TwoWorkspaces) -> None:
    h = bearer(two.b_key)
    assert two.client.get("/v1/batches", headers=h).json()["data"] == []
    assert two.client.get("/v1/batches", headers=h).json()["batches"] == []
    assert two.client.get("/v1/files", headers=h).json()["data"] == []
    assert two.a_key_id not in {k["key_id"] for k in two.client.get("/v1/keys", headers=h).json()["keys"]}
    assert {k["workspace"] for k in two.client.get("/v1/keys", headers=h).json()["keys"]} == {"beta"}
    emails = {m["email"] for m in two.client.get("/v1/members", headers=h).json()["members"]}
    assert "ana@alpha.test" not in emails
    assert two.client.get("/v1/credits/history", headers=h).json() == {"entries": []}
    assert two.client.get("/v1/webhooks", headers=h).json() == {"webhooks": []}
    credits = two.client.get("/v1/credits", headers=h).json()
    assert (credits["workspace"], credits["credited_usd_micros"], credits["held_usd_micros"]) == ("beta", 0, 0)


def test_a_quote_made_by_another_workspace_is_stored_under_that_workspace(two: TwoWorkspaces) -> None:
    response = two.client.post("/v1/quotes?filename=m.csv", content=CSV, headers=bearer(two.b_key))
    assert response.status_code == 201
    assert response.json()["workspace"] == "beta"
    assert response.json()["quote_id"] != two.a_quote
    assert two.client.get(f"/v1/quotes/{two.a_quote}", headers=bearer(two.a_key)).json()["workspace"] == "alpha"


def test_setting_a_member_of_another_workspace_acts_only_on_the_callers_workspace(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path)
    accounts = Accounts(settings.database)
    accounts.set_member("alpha", "ana@alpha.test", "owner", actor="test")
    accounts.set_member("alpha", "vic@alpha.test", "viewer", actor="test")
    accounts.set_member("beta", "bob@beta.test", "owner", actor="test")
    b_key, _ = accounts.create_key("beta", name="b", scopes=list(SCOPES), created_by="bob@beta.test", actor="t")
    with TestClient(create_app(settings)) as client:
        response = client.put("/v1/members/vic@alpha.test", json={"role": "admin"}, headers=bearer(b_key))
    assert response.status_code == 200
    assert accounts.role("alpha", "vic@alpha.test") == "viewer"
    assert accounts.role("beta", "vic@alpha.test") == "admin"


# -- suspension and rate limits ----------------------------------------------------------------------------
def test_a_suspended_workspace_gets_403_workspace_suspended_on_every_endpoint(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path)
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    accounts.set_member("other", "owner@other.test", "owner", actor="test")
    key, _ = accounts.create_key("acme", name="k", scopes=list(SCOPES), created_by="owner@acme.test", actor="t")
    other, _ = accounts.create_key("other", name="k", scopes=list(SCOPES), created_by="owner@other.test", actor="t")
    accounts.set_suspended("acme", True, reason="unpaid invoice", actor="test")
    with TestClient(create_app(settings)) as client:
        for endpoint in KEYED_ENDPOINTS:
            response = probe(client, endpoint, key)
            assert response.status_code == 403, endpoint
            assert response.json()["error"]["code"] == "workspace_suspended", endpoint
            assert "unpaid invoice" in response.json()["error"]["message"]
        assert client.get("/v1/credits", headers=bearer(other)).status_code == 200


def test_a_resumed_workspace_is_served_again(tmp_path: Path) -> None:
    settings = quiet_settings(tmp_path)
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    key, _ = accounts.create_key("acme", name="k", scopes=list(SCOPES), created_by="owner@acme.test", actor="t")
    accounts.set_suspended("acme", True, reason="unpaid invoice", actor="test")
    accounts.set_suspended("acme", False, reason=None, actor="test")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/credits", headers=bearer(key)).status_code == 200


def test_the_call_after_the_burst_gets_429_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_PER_MINUTE", "1")
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_BURST", "3")
    settings = load_settings()
    assert (settings.api.rate_limit_per_minute, settings.api.rate_limit_burst) == (1, 3)
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    key, _ = accounts.create_key("acme", name="k", scopes=list(SCOPES), created_by="owner@acme.test", actor="t")
    with TestClient(create_app(settings)) as client:
        statuses = [client.get("/v1/credits", headers=bearer(key)).status_code for _ in range(3)]
        with caplog.at_level(logging.INFO, logger="batchrouter.api"):
            limited = client.get("/v1/credits", headers=bearer(key))
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.json()["error"]["reference"] in logged(caplog)


def test_the_rate_limit_is_per_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_PER_MINUTE", "1")
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_BURST", "2")
    settings = load_settings()
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    first, _ = accounts.create_key("acme", name="1", scopes=list(SCOPES), created_by="owner@acme.test", actor="t")
    second, _ = accounts.create_key("acme", name="2", scopes=list(SCOPES), created_by="owner@acme.test", actor="t")
    with TestClient(create_app(settings)) as client:
        used_up = [client.get("/v1/credits", headers=bearer(first)).status_code for _ in range(3)]
        fresh = client.get("/v1/credits", headers=bearer(second)).status_code
    assert used_up == [200, 200, 429]
    assert fresh == 200
