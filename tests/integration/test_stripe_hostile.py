"""Validly signed but odd Stripe events answer 400 or 200 and credit nothing they should not; the
unauthenticated webhook refuses an unsigned or oversized body before buffering it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakes.stripe_server import FakeStripe, deliver, running_fake_stripe, stripe_signature
from starlette.testclient import TestClient

from batchrouter.api import create_app
from batchrouter.core.config import Settings, load_settings
from batchrouter.money.billing import create_checkout, reconcile
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

WHSEC = "whsec_test_hostile_0123456789abcdef"
WEBHOOK = "/v1/stripe/webhook"
USD = 1_000_000


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    with running_fake_stripe() as server:
        monkeypatch.setenv("STRIPE_SECRET_KEY", server.api_key)
        monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WHSEC)
        monkeypatch.setenv("BATCHROUTER_BILLING__API_BASE", server.base_url)
        monkeypatch.setenv("BATCHROUTER_API__MAX_BODY_BYTES", "65536")
        yield server


@pytest.fixture
def settings(fake: FakeStripe) -> Settings:
    return load_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def paid_event(fake: FakeStripe, settings: Settings) -> dict[str, Any]:
    session_id, _ = create_checkout(settings, workspace="acme", pack="starter")
    (event,) = fake.pay(session_id, "immediate")
    return event


def _credited(settings: Settings) -> int:
    return sum(Ledger(settings.database).balance(w).credited_usd_micros for w in ("acme", "other"))


def _obj(event: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = event["data"]["object"]
    return obj


ODD_EVENTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "no type": lambda e: e.pop("type"),
    "type not a string": lambda e: e.update(type=["checkout.session.completed"]),
    "no id": lambda e: e.pop("id"),
    "unknown type": lambda e: e.update(type="invoice.paid"),
    "no data": lambda e: e.pop("data"),
    "data not an object": lambda e: e.update(data="x"),
    "object missing": lambda e: e["data"].pop("object"),
    "object a list": lambda e: e["data"].update(object=[1, 2]),
    "session without id": lambda e: _obj(e).pop("id"),
    "session id a number": lambda e: _obj(e).update(id=12),
    "metadata a list": lambda e: _obj(e).update(metadata=["workspace", "acme"]),
    "metadata values not strings": lambda e: _obj(e).update(metadata={"workspace": 5, "pack": ["starter"]}),
    "workspace path": lambda e: _obj(e)["metadata"].update(workspace="../other"),
    "workspace with nul": lambda e: _obj(e)["metadata"].update(workspace="acme\x00"),
    "workspace too long": lambda e: _obj(e)["metadata"].update(workspace="a" * 500),
    "huge amount": lambda e: _obj(e).update(amount_total=10**40),
    "amount as text": lambda e: _obj(e).update(amount_total="1000"),
    "amount too small": lambda e: _obj(e).update(amount_total=1),
    "foreign currency": lambda e: _obj(e).update(currency="jpy"),
    "currency missing": lambda e: _obj(e).pop("currency"),
    "payment_status odd": lambda e: _obj(e).update(payment_status={"paid": True}),
    "pack unknown": lambda e: _obj(e)["metadata"].update(pack="x" * 300),
}


@pytest.mark.parametrize("mutation", sorted(ODD_EVENTS))
def test_a_signed_odd_event_answers_400_or_200_and_credits_nothing(
    client: TestClient, settings: Settings, paid_event: dict[str, Any], mutation: str
) -> None:
    event = copy.deepcopy(paid_event)
    ODD_EVENTS[mutation](event)
    response = deliver(WEBHOOK, event, client=client, secret=WHSEC)
    assert response.status_code in (200, 400), response.text
    assert "error" in response.json() or response.json()["outcome"] != "credited"
    assert _credited(settings) == 0


@pytest.mark.parametrize(
    "body",
    [b"[1, 2, 3]", b'"text"', b"null", b"not json", b"\xff\xfe", b"[" * 30_000 + b"]" * 30_000, b"{}"],
    ids=["list", "string", "null", "text", "binary", "deep", "empty object"],
)
def test_a_signed_body_that_is_not_an_event_answers_400(client: TestClient, settings: Settings, body: bytes) -> None:
    response = client.post(WEBHOOK, content=body, headers={"Stripe-Signature": stripe_signature(body, WHSEC)})
    assert response.status_code == 400, response.text
    assert _credited(settings) == 0


def test_a_workspace_in_metadata_is_credited_under_its_canonical_name(
    client: TestClient, settings: Settings, paid_event: dict[str, Any]
) -> None:
    _obj(paid_event)["metadata"]["workspace"] = " ACME "
    response = deliver(WEBHOOK, paid_event, client=client, secret=WHSEC)
    assert response.json()["outcome"] == "credited"
    assert Ledger(settings.database).balance("acme").credited_usd_micros == 10 * USD


def test_the_genuine_event_still_credits_once(
    client: TestClient, settings: Settings, paid_event: dict[str, Any]
) -> None:
    outcomes = [deliver(WEBHOOK, paid_event, client=client, secret=WHSEC).json()["outcome"] for _ in range(2)]
    assert outcomes == ["credited", "already_credited"]
    assert _credited(settings) == 10 * USD


def test_a_foreign_session_paying_less_than_the_pack_is_not_credited_by_reconcile(
    fake: FakeStripe, settings: Settings
) -> None:
    import stripe

    sdk = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.base_url})
    session = sdk.v1.checkout.sessions.create(params={
        "mode": "payment", "metadata": {"workspace": "acme", "pack": "scale"},
        "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 1,
                                                      "product_data": {"name": "x"}}}],
    })  # fmt: skip
    fake.pay(session.id, "immediate")
    results = reconcile(settings, Ledger(settings.database))
    assert [r.outcome for r in results if r.session_id == session.id] == ["amount_mismatch"]
    assert _credited(settings) == 0


def test_an_unsigned_webhook_is_refused_before_its_body_is_read(client: TestClient) -> None:
    response = client.post(WEBHOOK, content=b"x" * 1000, headers={"Content-Length": str(10**12)})
    assert response.status_code == 400
    assert "Stripe-Signature" in response.json()["error"]["message"]


def test_an_oversized_signed_webhook_answers_413_with_the_limit(client: TestClient) -> None:
    body = json.dumps({"id": "evt_1", "type": "x", "pad": "x" * 70_000}).encode()
    response = client.post(WEBHOOK, content=body, headers={"Stripe-Signature": stripe_signature(body, WHSEC)})
    assert response.status_code == 413
    assert "65,536" in response.json()["error"]["message"]


def test_an_oversized_chunked_webhook_answers_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    response = client.post(WEBHOOK, content=chunks(), headers={"Stripe-Signature": "t=1,v1=00"})
    assert response.status_code == 413
