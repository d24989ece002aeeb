"""Stripe credit packs: Checkout Sessions to buy, verified webhooks and reconciliation to credit.

A pack is fulfilled exactly once per Checkout Session, only when Stripe says it is paid, at the
pack's configured price: the ledger's idempotency key is `stripe:<session id>`, so duplicate,
reordered or replayed events (and the reconciliation job) can never credit twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from batchrouter.core.config import Settings
from batchrouter.core.errors import BillingError as BillingError
from batchrouter.core.errors import ConfigError, IdentityError
from batchrouter.core.errors import MalformedEvent as MalformedEvent
from batchrouter.core.errors import SignatureError as SignatureError
from batchrouter.core.identity import canonical_workspace
from batchrouter.money.ledger import Entry, Ledger

if TYPE_CHECKING:
    import stripe

FULFILMENT_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


@dataclass(frozen=True)
class Fulfilment:
    session_id: str
    workspace: str | None
    pack: str | None
    credited_usd_micros: int
    # credited | already_credited | not_paid | unknown_pack | not_ours | invalid_workspace | amount_mismatch
    outcome: str
    entry: Entry | None = None


def _secret(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{what} is not set: put it in the environment variable {name}")
    return value


def stripe_client(settings: Settings) -> stripe.StripeClient:
    import stripe  # here: the SDK loads for billing alone, not with every command that reads credits

    billing = settings.billing
    key = _secret(billing.stripe_api_key_env, "the Stripe secret key")
    addresses: Any = {"api": billing.api_base} if billing.api_base else None
    return stripe.StripeClient(key, base_addresses=addresses, max_network_retries=2)


def pack_price_micros(settings: Settings, pack: str) -> int:
    price = settings.billing.packs.get(pack)
    if price is None:
        known = ", ".join(f"{n} ({p} USD)" for n, p in settings.billing.packs.items())
        raise BillingError(f"unknown pack {pack!r}; configured packs: {known}")
    return int(Decimal(price) * 10**6)


def create_checkout(settings: Settings, *, workspace: str, pack: str) -> tuple[str, str]:
    """A Checkout Session for one pack; returns (session id, URL to pay at)."""
    workspace = canonical_workspace(workspace)
    micros = pack_price_micros(settings, pack)
    with _stripe_errors("create the Checkout Session"):
        session = _create_session(settings, workspace, pack, micros)
    return str(session.id), str(session.url)


@contextmanager
def _stripe_errors(what: str) -> Iterator[None]:
    """Stripe's refusals and outages as a BillingError (a message, not a traceback)."""
    import stripe

    try:
        yield
    except stripe.StripeError as exc:
        status = f" (HTTP {exc.http_status})" if exc.http_status else ""
        raise BillingError(f"Stripe could not {what}{status}: {exc.user_message or exc}") from exc


def _create_session(settings: Settings, workspace: str, pack: str, micros: int) -> Any:
    return stripe_client(settings).v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "client_reference_id": workspace,
            "metadata": {"workspace": workspace, "pack": pack},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": settings.billing.currency,
                        "unit_amount": micros // 10**4,  # cents
                        "product_data": {"name": f"BatchRouter credits: {pack} pack"},
                    },
                }
            ],
            "success_url": settings.billing.success_url,
            "cancel_url": settings.billing.cancel_url,
        }
    )


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedEvent(f"{where}.{name} is missing or not a {getattr(kind, '__name__', 'valid value')}")
    return value


def fulfil_session(settings: Settings, ledger: Ledger, session: Any) -> Fulfilment:
    """Credit a paid Checkout Session's pack, once, when it paid the pack's price in our currency.

    Raises:
        MalformedEvent: the session has no id, or fields of the wrong type.
    """
    # The SDK's StripeObject is not a dict (no `.get`): read a plain copy of it.
    sdk = sys.modules.get("stripe")  # a StripeObject exists only once the SDK is loaded
    session = session.to_dict() if sdk is not None and isinstance(session, sdk.StripeObject) else session
    if not isinstance(session, dict):
        raise MalformedEvent("data.object is not a Checkout Session object")
    session_id = str(_field(session, "id", str, "data.object"))
    metadata = session.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise MalformedEvent("data.object.metadata is not an object")
    raw_workspace, pack = metadata.get("workspace"), metadata.get("pack")
    if not isinstance(raw_workspace, str) or not isinstance(pack, str) or not raw_workspace or not pack:
        return Fulfilment(session_id, None, None, 0, "not_ours")
    try:
        workspace = canonical_workspace(raw_workspace)
    except IdentityError:
        return Fulfilment(session_id, None, pack, 0, "invalid_workspace")
    if session.get("payment_status") != "paid":
        return Fulfilment(session_id, workspace, pack, 0, "not_paid")
    if pack not in settings.billing.packs:
        return Fulfilment(session_id, workspace, pack, 0, "unknown_pack")
    micros = pack_price_micros(settings, pack)
    # What was paid must be the pack's price in our currency: a session made elsewhere with our
    # metadata, a foreign currency or another amount credits nothing.
    amount, currency = session.get("amount_total"), session.get("currency")
    paid_cents = amount if isinstance(amount, int) and not isinstance(amount, bool) else None
    if (
        paid_cents != micros // 10**4
        or not isinstance(currency, str)
        or currency.lower() != settings.billing.currency.lower()
    ):
        return Fulfilment(session_id, workspace, pack, 0, "amount_mismatch")
    entry = ledger.purchase(
        workspace, micros, key=f"stripe:{session_id}", memo=f"Stripe Checkout {session_id}, pack {pack}"
    )
    return Fulfilment(session_id, workspace, pack, micros, "already_credited" if entry.replayed else "credited", entry)


def verify_event(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event as a plain dict, if `Stripe-Signature` is valid for this exact body within the tolerance.

    Raises:
        SignatureError: the signature is missing or does not verify.
        MalformedEvent: genuine, but the body is not a JSON object.
    """
    if not signature:
        raise SignatureError("missing Stripe-Signature header")
    import stripe

    secret = _secret(settings.billing.webhook_secret_env, "the Stripe webhook signing secret")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature, secret, tolerance=settings.billing.tolerance_s)
    except UnicodeDecodeError as exc:
        raise SignatureError("the body is not UTF-8 text, so it cannot be a signed Stripe event") from exc
    except stripe.SignatureVerificationError as exc:
        raise SignatureError(f"invalid Stripe-Signature: {exc.user_message or exc}") from exc
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as exc:  # a signed body that is not JSON, or nested too deep
        raise MalformedEvent(f"the body is not a Stripe event: {str(exc)[:200]}") from exc
    if not isinstance(event, dict):
        raise MalformedEvent(f"the body is a JSON {type(event).__name__}, not a Stripe event object")
    return event


def handle_webhook(settings: Settings, ledger: Ledger, payload: bytes, signature: str | None) -> dict[str, Any]:
    """Verify and apply one webhook delivery; nothing is written when it raises.

    Raises:
        SignatureError: the delivery is not genuine.
        MalformedEvent: genuine, but not shaped like a Stripe event.
    """
    event = verify_event(settings, payload, signature)
    event_id, kind = _field(event, "id", str, "event"), _field(event, "type", str, "event")
    if kind not in FULFILMENT_EVENTS:
        return {"received": True, "event": event_id, "type": kind, "outcome": "ignored"}
    data = event.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent("event.data is missing or not an object")
    result = fulfil_session(settings, ledger, data.get("object"))
    return {"received": True, "event": event_id, "type": kind, "session": result.session_id,
            "workspace": result.workspace, "outcome": result.outcome,
            "credited_usd_micros": result.credited_usd_micros}  # fmt: skip


def reconcile(settings: Settings, ledger: Ledger, *, since: int | None = None) -> list[Fulfilment]:
    """Fulfil every paid session of recent Checkout events the webhook may have missed (idempotent)."""
    client = stripe_client(settings)
    since = since if since is not None else int(time.time()) - settings.billing.reconcile_lookback_hours * 3600
    results = []
    for event_type in FULFILMENT_EVENTS:
        with _stripe_errors(f"list {event_type} events"):
            events = client.v1.events.list(params={"type": event_type, "created": {"gte": since}, "limit": 100})
            for event in events.auto_paging_iter():
                # Each event carries the session as it was then: a `completed` one may be unpaid while a
                # later `async_payment_succeeded` one is paid. Fulfilment is idempotent, so try them all.
                try:
                    results.append(fulfil_session(settings, ledger, event["data"]["object"]))
                except MalformedEvent:
                    continue  # not a session we could ever credit; the webhook answered it 400
    return results
