"""Stripe credit packs end to end against a local fake of Stripe's API on loopback.

`credits buy` creates Checkout Sessions through the official SDK pointed at the fake; the webhook
(`batchrouter serve`) credits a pack once and only when paid, and only for a genuine signature;
reconciliation credits what a webhook outage missed, once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe
from fakes.stripe_server import (
    DEFAULT_API_KEY,
    FakeStripe,
    deliver,
    event_payload,
    running_fake_stripe,
    stripe_signature,
)
from starlette.testclient import TestClient

from batchrouter.api import create_app
from batchrouter.cli import main
from batchrouter.core.config import BillingConfig, Settings, load_settings
from batchrouter.money.billing import create_checkout, reconcile
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

USD = 1_000_000
WHSEC = "whsec_test_4c1d2f0e9b8a7766554433221100ffee"
WEBHOOK = "/v1/stripe/webhook"
TOLERANCE_S = BillingConfig().tolerance_s


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    with running_fake_stripe() as server:
        monkeypatch.setenv("STRIPE_SECRET_KEY", server.api_key)
        monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WHSEC)
        monkeypatch.setenv("BATCHROUTER_BILLING__API_BASE", server.base_url)
        yield server


@pytest.fixture
def settings(fake: FakeStripe) -> Settings:
    return load_settings()


@pytest.fixture
def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.database)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def sdk(fake: FakeStripe, key: str | None = None) -> stripe.StripeClient:
    return stripe.StripeClient(key or fake.api_key, base_addresses={"api": fake.base_url})


def buy(settings: Settings, workspace: str = "acme", pack: str = "starter") -> str:
    session_id, _ = create_checkout(settings, workspace=workspace, pack=pack)
    return session_id


def foreign_session(fake: FakeStripe, metadata: dict[str, str]) -> str:
    """A session some other code created with the same Stripe account (not through BatchRouter)."""
    return (
        sdk(fake)
        .v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "metadata": metadata,
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {"currency": "usd", "unit_amount": 99_00, "product_data": {"name": "x"}},
                    }
                ],
            }
        )
        .id
    )


def entries(ledger: Ledger) -> int:
    return int(ledger.verify()["entries"])


def purchases(ledger: Ledger, workspace: str = "acme") -> list[dict[str, Any]]:
    return [r for r in ledger.history(workspace) if r["op"] == "purchase"]


def post(client: TestClient, event: dict[str, Any], **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("secret", WHSEC)
    response: httpx.Response = deliver(WEBHOOK, event, client=client, **kwargs)
    return response


# -- the fake against the official SDK -------------------------------------------------------------------
def test_sdk_creates_a_checkout_session_in_the_fake_from_bracket_encoded_params(fake: FakeStripe) -> None:
    session = sdk(fake).v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "client_reference_id": "acme",
            "metadata": {"workspace": "acme", "pack": "team"},
            "line_items": [
                {
                    "quantity": 2,
                    "price_data": {"currency": "usd", "unit_amount": 25_00, "product_data": {"name": "credits"}},
                }
            ],
            "success_url": "http://127.0.0.1/ok",
        }
    )
    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert (session.status, session.payment_status, session.amount_total, session.currency) == (
        "open",
        "unpaid",
        50_00,
        "usd",
    )
    assert session.url.endswith(session.id)
    stored = fake.state()["sessions"][session.id]
    assert stored["metadata"] == {"workspace": "acme", "pack": "team"}
    assert fake.state()["line_items"][session.id] == [
        {"quantity": 2, "unit_amount": 25_00, "currency": "usd", "description": "credits"}
    ]
    (request,) = [r for r in fake.state()["requests"] if r["method"] == "POST"]
    assert request["params"]["line_items"][0]["price_data"]["unit_amount"] == "2500"
    assert request["stripe_version"] == stripe.api_version
    again = sdk(fake).v1.checkout.sessions.retrieve(session.id)
    assert (again.id, again.metadata.to_dict()) == (session.id, {"workspace": "acme", "pack": "team"})


def test_sdk_lists_events_newest_first_across_pages(fake: FakeStripe) -> None:
    for _ in range(5):
        fake.pay(foreign_session(fake, {"n": "1"}), "immediate")
    listed = sdk(fake).v1.events.list(params={"type": "checkout.session.completed", "limit": 2})
    ids = [e.id for e in listed.auto_paging_iter()]
    assert ids == [e["id"] for e in reversed(fake.state()["events"])]
    pages = [r for r in fake.state()["requests"] if r["path"] == "/v1/events"]
    assert len(pages) == 3
    assert [("starting_after" in p["params"]) for p in pages] == [False, True, True]


def test_sdk_event_list_filters_by_type_and_created(fake: FakeStripe) -> None:
    now = int(time.time())
    old, new = foreign_session(fake, {}), foreign_session(fake, {})
    fake.pay(old, "delayed", created=now - 7200)
    fake.pay(new, "delayed", created=now)
    events = sdk(fake).v1.events.list(
        params={"type": "checkout.session.async_payment_succeeded", "created": {"gte": now - 60}}
    )
    assert [(e.type, e.data.object.id) for e in events.data] == [("checkout.session.async_payment_succeeded", new)]
    assert events.has_more is False


def test_fake_events_have_stripes_event_shape(fake: FakeStripe) -> None:
    sid = foreign_session(fake, {"workspace": "acme"})
    (event,) = fake.pay(sid, "immediate")
    assert event["id"].startswith("evt_")
    assert (event["object"], event["type"], event["livemode"]) == ("event", "checkout.session.completed", False)
    assert event["api_version"] and isinstance(event["created"], int)
    assert event["data"]["object"]["id"] == sid and event["data"]["object"]["payment_status"] == "paid"
    parsed = stripe.Webhook.construct_event(event_payload(event), stripe_signature(event_payload(event), WHSEC), WHSEC)
    assert parsed.id == event["id"] and parsed.data.object.payment_status == "paid"


def test_sdk_raises_authentication_error_for_a_key_the_fake_does_not_know(fake: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError):
        sdk(fake, "sk_test_not_the_right_one").v1.checkout.sessions.create(params={"mode": "payment"})
    assert fake.state()["sessions"] == {}


def test_sdk_raises_invalid_request_error_for_an_unknown_session(fake: FakeStripe) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk(fake).v1.checkout.sessions.retrieve("cs_test_missing")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


def test_signature_helper_signs_exactly_as_the_sdk_does() -> None:
    body = b'{"id": "evt_1"}'
    header = stripe_signature(body, WHSEC, timestamp=1_700_000_000)
    assert header == stripe.WebhookSignature.generate_signature_header(body.decode(), WHSEC, timestamp=1_700_000_000)
    rotated = stripe_signature(body, ["whsec_old", WHSEC])
    assert rotated.count("v1=") == 2
    assert stripe.WebhookSignature.verify_header(body, rotated, WHSEC, tolerance=300)


# -- credits buy -------------------------------------------------------------------------------------------
def test_credits_buy_creates_a_checkout_session_and_prints_its_url(
    fake: FakeStripe, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["credits", "buy", "--workspace", "acme", "--pack", "team"]) == 0
    out = capsys.readouterr().out.strip()
    (session,) = fake.state()["sessions"].values()
    assert out == f"Pay here: {session['url']}"
    assert session["metadata"] == {"workspace": "acme", "pack": "team"}
    assert (session["client_reference_id"], session["mode"], session["amount_total"], session["currency"]) == (
        "acme",
        "payment",
        50_00,
        "usd",
    )


def test_credits_buy_json_prints_the_session_id_and_url(fake: FakeStripe, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credits", "buy", "--workspace", "acme", "--pack", "scale", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    session = fake.state()["sessions"][printed["session_id"]]
    assert printed["url"] == session["url"]
    assert (session["amount_total"], session["metadata"]["pack"]) == (200_00, "scale")


def test_credits_buy_of_an_unknown_pack_exits_2_and_creates_no_session(
    fake: FakeStripe, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["credits", "buy", "--workspace", "acme", "--pack", "mega"]) == 2
    err = capsys.readouterr().err
    assert "unknown pack 'mega'" in err and "starter" in err
    assert fake.state()["sessions"] == {}


def test_credits_buy_without_a_stripe_key_exits_2_naming_the_variable(
    fake: FakeStripe, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    assert main(["credits", "buy", "--workspace", "acme", "--pack", "team"]) == 2
    assert "STRIPE_SECRET_KEY" in capsys.readouterr().err
    assert fake.state()["requests"] == []


def test_credits_buy_with_a_key_stripe_rejects_exits_2_with_stripes_message(
    fake: FakeStripe, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_revoked_key_000000")
    assert main(["credits", "buy", "--workspace", "acme", "--pack", "team"]) == 2
    err = capsys.readouterr().err
    assert "Invalid API Key" in err and "Traceback" not in err
    assert fake.state()["sessions"] == {}


# -- the webhook: fulfilment -----------------------------------------------------------------------------
def test_signed_paid_checkout_completed_credits_the_pack_price_once(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    sid = buy(settings, pack="starter")
    (event,) = fake.pay(sid, "immediate")
    response = post(client, event)
    assert response.status_code == 200
    body = response.json()
    assert (body["outcome"], body["session"], body["credited_usd_micros"]) == ("credited", sid, 10 * USD)
    assert ledger.balance("acme").available_usd_micros == 10 * USD
    (purchase,) = purchases(ledger)
    assert (purchase["amount_usd_micros"], purchase["idempotency_key"]) == (10 * USD, f"stripe:{sid}")


def test_duplicate_deliveries_of_one_event_credit_once(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    sid = buy(settings, pack="team")
    (event,) = fake.pay(sid, "immediate")
    outcomes = [post(client, event).json()["outcome"] for _ in range(3)]
    outcomes.append(post(client, event, timestamp=int(time.time()) + 5).json()["outcome"])  # a later retry
    assert outcomes == ["credited", "already_credited", "already_credited", "already_credited"]
    assert ledger.balance("acme").credited_usd_micros == 50 * USD
    assert len(purchases(ledger)) == 1


def test_async_payment_succeeded_before_completed_credits_once(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    sid = buy(settings, pack="starter")
    completed, succeeded = fake.pay(sid, "delayed")
    assert (completed["data"]["object"]["payment_status"], succeeded["data"]["object"]["payment_status"]) == (
        "unpaid",
        "paid",
    )
    assert post(client, succeeded).json()["outcome"] == "credited"
    assert post(client, completed).json()["outcome"] == "not_paid"
    assert ledger.balance("acme").credited_usd_micros == 10 * USD
    assert len(purchases(ledger)) == 1


def test_completed_but_unpaid_credits_nothing_until_the_async_payment_succeeds(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    sid = buy(settings, pack="team")
    (completed,) = fake.pay(sid, "pending")
    assert post(client, completed).json()["outcome"] == "not_paid"
    assert entries(ledger) == 0
    succeeded = fake.async_payment(sid, "succeeded")
    assert post(client, succeeded).json()["outcome"] == "credited"
    assert post(client, completed).json()["outcome"] == "not_paid"
    assert ledger.balance("acme").credited_usd_micros == 50 * USD


def test_failed_async_payment_credits_nothing(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    sid = buy(settings)
    (completed,) = fake.pay(sid, "pending")
    failed = fake.async_payment(sid, "failed")
    assert [post(client, e).json()["outcome"] for e in (completed, failed)] == ["not_paid", "ignored"]
    assert entries(ledger) == 0


def test_expired_session_event_is_ignored(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    event = fake.expire(buy(settings))
    response = post(client, event)
    assert (response.status_code, response.json()["outcome"]) == (200, "ignored")
    assert entries(ledger) == 0


def test_paid_session_of_an_unknown_pack_is_not_credited(fake: FakeStripe, ledger: Ledger, client: TestClient) -> None:
    (event,) = fake.pay(foreign_session(fake, {"workspace": "acme", "pack": "mega"}), "immediate")
    response = post(client, event)
    assert (response.status_code, response.json()["outcome"]) == (200, "unknown_pack")
    assert entries(ledger) == 0


def test_paid_session_without_batchrouter_metadata_is_not_credited(
    fake: FakeStripe, ledger: Ledger, client: TestClient
) -> None:
    (event,) = fake.pay(foreign_session(fake, {"order": "42"}), "immediate")
    assert post(client, event).json()["outcome"] == "not_ours"
    assert entries(ledger) == 0


# -- the webhook: signatures -----------------------------------------------------------------------------
def _valid(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, WHSEC)


def _wrong_secret(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, "whsec_someone_else")


def _stale(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, WHSEC, timestamp=int(time.time()) - TOLERANCE_S - 60)


def _just_within_tolerance(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, WHSEC, timestamp=int(time.time()) - TOLERANCE_S + 60)


def _tampered(body: bytes) -> tuple[bytes, str | None]:
    forged = body.replace(b'"pack": "starter"', b'"pack": "scale"')
    assert forged != body
    return forged, stripe_signature(body, WHSEC)


def _missing(body: bytes) -> tuple[bytes, str | None]:
    return body, None


def _several_one_valid(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, ["whsec_rotated_out", WHSEC], extra_v1=["0" * 64])


def _several_none_valid(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, ["whsec_a", "whsec_b"], extra_v1=["f" * 64])


def _v0_only(body: bytes) -> tuple[bytes, str | None]:
    return body, stripe_signature(body, WHSEC).replace("v1=", "v0=")


def _garbage(body: bytes) -> tuple[bytes, str | None]:
    return body, "not a signature"


ACCEPTED = [_valid, _several_one_valid, _just_within_tolerance]
REFUSED = [_wrong_secret, _stale, _tampered, _missing, _several_none_valid, _v0_only, _garbage]


@pytest.mark.parametrize("sign", ACCEPTED, ids=lambda f: f.__name__.strip("_"))
def test_webhook_with_a_genuine_signature_is_accepted(
    sign: Any, fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    (event,) = fake.pay(buy(settings, pack="starter"), "immediate")
    body, header = sign(event_payload(event))
    response = deliver(WEBHOOK, body, signature=header, client=client)
    assert (response.status_code, response.json()["outcome"]) == (200, "credited")
    assert ledger.balance("acme").credited_usd_micros == 10 * USD


@pytest.mark.parametrize("sign", REFUSED, ids=lambda f: f.__name__.strip("_"))
def test_webhook_without_a_genuine_signature_answers_400_invalid_signature_and_writes_nothing(
    sign: Any, fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    (event,) = fake.pay(buy(settings, pack="starter"), "immediate")
    body, header = sign(event_payload(event))
    response = deliver(WEBHOOK, body, signature=header, client=client)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_signature"
    assert error["message"] and error["reference"].startswith("err_")
    assert entries(ledger) == 0
    assert ledger.balance("acme").credited_usd_micros == 0


def test_webhook_without_a_configured_signing_secret_answers_503_and_writes_nothing(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    (event,) = fake.pay(buy(settings), "immediate")
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    response = post(client, event)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "not_configured")
    assert "STRIPE_WEBHOOK_SECRET" in response.json()["error"]["message"]
    assert entries(ledger) == 0


# -- the webhook on a real server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`batchrouter serve` in its own process on a free loopback port, with its own ledger file."""
    root = tmp_path_factory.mktemp("serve")
    env = {
        **os.environ,
        "BATCHROUTER_DATABASE": str(root / "batchrouter.duckdb"),
        "BATCHROUTER_STORAGE__ROOT": str(root / "bucket"),
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "STRIPE_SECRET_KEY": DEFAULT_API_KEY,
    }
    env.pop("BATCHROUTER_CONFIG", None)
    port = _free_port()
    cmd = [sys.executable, "-m", "batchrouter.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = root / "serve.log"  # a file, not a pipe: nobody drains a pipe while the tests run
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"batchrouter serve exited at start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("batchrouter serve did not answer /healthz within 60 s")
            time.sleep(0.05)  # poll interval
        yield {"url": base, "database": env["BATCHROUTER_DATABASE"]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_served_webhook_credits_a_pack_paid_in_stripe_exactly_once(
    server: dict[str, str], fake: FakeStripe, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add_endpoint(server["url"] + WEBHOOK, WHSEC)
    assert main(["credits", "buy", "--workspace", "served", "--pack", "team", "--json"]) == 0
    sid = json.loads(capsys.readouterr().out)["session_id"]
    # The customer pays; Stripe (the fake) delivers the signed event before answering.
    paid = httpx.post(f"{fake.base_url}/_test/sessions/{sid}/pay", params={"mode": "immediate"}, timeout=30)
    assert paid.status_code == 200
    (delivery,) = fake.state()["deliveries"]
    assert delivery["status"] == 200 and json.loads(delivery["body"])["outcome"] == "credited"
    event_id = paid.json()["events"][0]["id"]
    resent = httpx.post(f"{fake.base_url}/_test/events/{event_id}/resend", timeout=30).json()["deliveries"]
    assert [json.loads(d["body"])["outcome"] for d in resent] == ["already_credited"]
    served = Ledger(server["database"])
    assert served.balance("served").credited_usd_micros == 50 * USD
    assert [r["idempotency_key"] for r in served.history("served")] == [f"stripe:{sid}"]


def test_served_webhook_credits_once_when_duplicates_arrive_concurrently(
    server: dict[str, str], fake: FakeStripe, settings: Settings
) -> None:
    sid = buy(settings, workspace="racing", pack="starter")
    (event,) = fake.pay(sid, "immediate")
    body = event_payload(event)
    barrier = threading.Barrier(8)
    responses: list[httpx.Response] = []

    def send() -> None:
        barrier.wait(timeout=30)
        responses.append(deliver(server["url"] + WEBHOOK, body, secret=WHSEC))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["already_credited"] * 7 + ["credited"]
    served = Ledger(server["database"])
    assert served.balance("racing").credited_usd_micros == 10 * USD
    assert served.verify()["ok"]


# -- reconciliation ----------------------------------------------------------------------------------------
def outage(fake: FakeStripe, settings: Settings, client: TestClient) -> dict[str, str]:
    """Sessions in every state; only the first one's event reached the webhook before it went down."""
    sessions = {
        "delivered": buy(settings, pack="starter"),
        "paid": buy(settings, pack="team"),
        "delayed": buy(settings, pack="scale"),
        "pending": buy(settings, pack="team"),
        "expired": buy(settings, pack="team"),
        "unknown_pack": foreign_session(fake, {"workspace": "acme", "pack": "mega"}),
    }
    (event,) = fake.pay(sessions["delivered"], "immediate")
    assert post(client, event).json()["outcome"] == "credited"
    fake.pay(sessions["paid"], "immediate")
    fake.pay(sessions["delayed"], "delayed")
    fake.pay(sessions["pending"], "pending")
    fake.expire(sessions["expired"])
    fake.pay(sessions["unknown_pack"], "immediate")
    return sessions


def test_reconcile_credits_exactly_the_paid_sessions_the_webhook_missed(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    sessions = outage(fake, settings, client)
    results = reconcile(settings, ledger)
    credited = {r.session_id: r.credited_usd_micros for r in results if r.outcome == "credited"}
    assert credited == {sessions["paid"]: 50 * USD, sessions["delayed"]: 200 * USD}
    assert ledger.balance("acme").credited_usd_micros == (10 + 50 + 200) * USD
    assert {r["idempotency_key"] for r in purchases(ledger)} == {
        f"stripe:{sessions[k]}" for k in ("delivered", "paid", "delayed")
    }
    assert ledger.verify()["ok"]


def test_reconcile_run_twice_adds_nothing_the_second_time(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient
) -> None:
    outage(fake, settings, client)
    reconcile(settings, ledger)
    before = (entries(ledger), ledger.balance("acme"))
    again = reconcile(settings, ledger)
    assert [r for r in again if r.outcome == "credited"] == []
    assert (entries(ledger), ledger.balance("acme")) == before


def test_reconcile_pages_through_every_event(fake: FakeStripe, settings: Settings, ledger: Ledger) -> None:
    fake.page_cap = 2  # Stripe pages: five paid sessions take three pages
    for _ in range(5):
        fake.pay(buy(settings, pack="starter"), "immediate")
    results = reconcile(settings, ledger)
    assert sum(r.outcome == "credited" for r in results) == 5
    assert ledger.balance("acme").credited_usd_micros == 50 * USD


def test_reconcile_skips_events_older_than_the_lookback(fake: FakeStripe, settings: Settings, ledger: Ledger) -> None:
    lookback_s = settings.billing.reconcile_lookback_hours * 3600
    fake.pay(buy(settings, pack="scale"), "immediate", created=int(time.time()) - lookback_s - 3600)
    recent = buy(settings, pack="starter")
    fake.pay(recent, "immediate")
    results = reconcile(settings, ledger)
    assert [(r.session_id, r.outcome) for r in results] == [(recent, "credited")]
    assert ledger.balance("acme").credited_usd_micros == 10 * USD


def test_credits_reconcile_command_credits_the_missed_sessions_and_then_nothing(
    fake: FakeStripe, settings: Settings, ledger: Ledger, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    outage(fake, settings, client)
    capsys.readouterr()
    assert main(["credits", "reconcile"]) == 0
    assert "2 newly credited, $250.000000" in capsys.readouterr().out
    assert main(["credits", "reconcile"]) == 0
    assert "0 newly credited, $0.000000" in capsys.readouterr().out
    assert ledger.balance("acme").credited_usd_micros == 260 * USD
