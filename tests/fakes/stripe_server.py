"""A stateful fake of the few Stripe API endpoints BatchRouter uses, served over real HTTP on loopback.

Stripe API (what `stripe.StripeClient(key, base_addresses={"api": base_url})` calls):

    POST /v1/checkout/sessions          form-encoded, Stripe's bracket notation (metadata[workspace]=w,
                                        line_items[0][price_data][unit_amount]=1000); Idempotency-Key honoured
    GET  /v1/checkout/sessions/{id}
    GET  /v1/events                     type | types[], created / created[gt|gte|lt|lte], limit (1..100),
                                        starting_after, ending_before; newest first, a Stripe list object

Every /v1 request needs `Authorization: Bearer sk_test_...` (the key the fake was started with); errors
have Stripe's shape `{"error": {"type", "code", "message", "param"}}` and status.

Test control (no authentication), what the customer or Stripe's back office would do:

    POST   /_test/sessions/{id}/pay?mode=immediate|delayed|pending[&created=UNIX]
           immediate: payment_status paid, event checkout.session.completed
           delayed:   checkout.session.completed (unpaid), then checkout.session.async_payment_succeeded (paid)
           pending:   checkout.session.completed (unpaid) only; finish it with async_payment
    POST   /_test/sessions/{id}/async_payment?outcome=succeeded|failed
    POST   /_test/sessions/{id}/expire
    POST   /_test/webhook_endpoints?url=...&secret=...   events are then delivered there, signed, before
    DELETE /_test/webhook_endpoints/{id}                 the control request answers (none: an outage)
    POST   /_test/events/{id}/resend
    GET    /_test/state                                  sessions, events, deliveries, requests
    GET    /_test/health

The same control operations are methods of `FakeStripe` for tests in the same process; `page_cap`
makes list pages smaller than `limit` asks (Stripe's pagination, exercised without 100+ objects). Helpers sign a
payload exactly as Stripe signs webhooks (`stripe_signature`) and deliver an event to a URL (`deliver`).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from aiohttp import web

API_VERSION = "2026-10-28.endive"
DEFAULT_API_KEY = "sk_test_batchrouter_fake_0123456789"

SESSION_PARAMS = {
    "mode", "line_items", "metadata", "client_reference_id", "success_url", "cancel_url", "currency",
    "customer", "customer_email", "payment_method_types", "expires_at", "ui_mode", "allow_promotion_codes",
    "payment_intent_data", "locale", "submit_type", "expand",
}  # fmt: skip
LINE_ITEM_PARAMS = {"quantity", "price", "price_data"}
PRICE_DATA_PARAMS = {"currency", "unit_amount", "unit_amount_decimal", "product", "product_data", "tax_behavior"}
EVENT_LIST_PARAMS = {"type", "types", "created", "limit", "starting_after", "ending_before", "delivery_success"}


class StripeFault(Exception):
    """An API error answered with Stripe's error object."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


def _token(prefix: str, n: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


# -- Stripe's form encoding ------------------------------------------------------------------------
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def parse_stripe_form(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0][c]=v` pairs into nested dicts and lists, as Stripe's API reads them."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise StripeFault(400, f"Invalid parameter name: {key}", code="parameter_invalid_string", param=key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # `a[]=x`: append
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise StripeFault(400, f"Invalid parameter: {key}", code="parameter_invalid_string", param=key)
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        indices = sorted(int(k) for k in items)
        if indices == list(range(len(indices))):
            return [items[str(i)] for i in indices]
    return items


def _int(value: Any, param: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise StripeFault(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise StripeFault(400, f"Invalid value for {param}: {number}", code="parameter_invalid_integer", param=param)
    return number


def _unknown(given: Mapping[str, Any], known: set[str], prefix: str = "") -> None:
    for name in given:
        if name not in known:
            param = f"{prefix}[{name}]" if prefix else name
            raise StripeFault(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)


# -- webhook signing and delivery --------------------------------------------------------------------
def stripe_signature(
    payload: bytes | str,
    secrets_: str | Sequence[str],
    *,
    timestamp: int | None = None,
    extra_v1: Sequence[str] = (),
) -> str:
    """The `Stripe-Signature` header Stripe sends: `t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">`.

    Several secrets (an endpoint mid secret-rotation) give several v1 values, one per secret;
    `extra_v1` appends arbitrary further v1 values (e.g. stale or forged ones).
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    t = int(time.time()) if timestamp is None else int(timestamp)
    keys = [secrets_] if isinstance(secrets_, str) else list(secrets_)
    signed = f"{t}.".encode() + body
    values = [hmac.new(k.encode(), signed, hashlib.sha256).hexdigest() for k in keys] + list(extra_v1)
    return ",".join([f"t={t}", *(f"v1={v}" for v in values)])


def event_payload(event: Mapping[str, Any]) -> bytes:
    """The raw body Stripe posts for an event (pretty-printed JSON, as Stripe sends it)."""
    return json.dumps(event, indent=2).encode()


def deliver(
    url: str,
    event: Mapping[str, Any] | bytes,
    *,
    secret: str | Sequence[str] | None = None,
    timestamp: int | None = None,
    signature: str | None = None,
    client: Any = None,
    timeout_s: float = 10.0,
) -> Any:
    """POST one event to a webhook endpoint as Stripe does; returns the response.

    The body is the event's JSON (or the given raw bytes, e.g. a tampered copy). The header is
    `signature` when given, else a signature with `secret` (and `timestamp`), else absent.
    `client` may be any object with an httpx-style `post` (a Starlette TestClient: `url` is then a path).
    """
    body = event if isinstance(event, bytes) else event_payload(event)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    if signature is not None:
        headers["Stripe-Signature"] = signature
    elif secret is not None:
        headers["Stripe-Signature"] = stripe_signature(body, secret, timestamp=timestamp)
    if client is not None:
        return client.post(url, content=body, headers=headers)
    with httpx.Client(timeout=timeout_s) as http:
        return http.post(url, content=body, headers=headers)


@dataclass
class Endpoint:
    id: str
    url: str
    secret: str


@dataclass
class FakeStripe:
    """The fake's state and behaviour; thread-safe (the HTTP server runs in another thread)."""

    api_key: str = DEFAULT_API_KEY
    api_version: str = API_VERSION
    clock: Callable[[], float] = time.time
    # Fault injection: answer list pages of at most this many objects (with has_more), whatever `limit` says.
    page_cap: int | None = None
    base_url: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    line_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _idempotency: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- API -------------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> None:
        if not authorization or not authorization.startswith("Bearer "):
            raise StripeFault(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        key = authorization.removeprefix("Bearer ").strip()
        if not key.startswith("sk_test_"):
            raise StripeFault(
                401, "This fake accepts test-mode secret keys only (sk_test_...).", code="api_key_invalid"
            )
        if not hmac.compare_digest(key, self.api_key):
            raise StripeFault(401, f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}", code="api_key_invalid")

    def create_session(self, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        with self._lock:
            fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
            if idempotency_key and idempotency_key in self._idempotency:
                used, response = self._idempotency[idempotency_key]
                if used != fingerprint:
                    raise StripeFault(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        "used with. Try using a key other than '" + idempotency_key + "' if you meant to execute "
                        "a different request.",
                        kind="idempotency_error",
                    )
                return copy.deepcopy(response)
            session = self._new_session(params)
            if idempotency_key:
                self._idempotency[idempotency_key] = (fingerprint, copy.deepcopy(session))
            return copy.deepcopy(session)

    def _new_session(self, params: dict[str, Any]) -> dict[str, Any]:
        _unknown(params, SESSION_PARAMS)
        mode = params.get("mode")
        if mode is None:
            raise StripeFault(400, "Missing required param: mode.", code="parameter_missing", param="mode")
        if mode not in ("payment", "setup", "subscription"):
            raise StripeFault(400, "Invalid mode: must be one of payment, setup, or subscription", param="mode")
        items = params.get("line_items") or []
        if mode == "payment" and not items:
            raise StripeFault(400, "Missing required param: line_items.", code="parameter_missing", param="line_items")
        if not isinstance(items, list):
            raise StripeFault(400, "Invalid array", code="parameter_invalid_array", param="line_items")
        total, currencies, stored = 0, set(), []
        for i, item in enumerate(items):
            where = f"line_items[{i}]"
            if not isinstance(item, dict):
                raise StripeFault(400, "Invalid object", code="parameter_invalid_object", param=where)
            _unknown(item, LINE_ITEM_PARAMS, where)
            quantity = _int(item.get("quantity", 1), f"{where}[quantity]", minimum=1, maximum=999_999)
            price = item.get("price_data")
            if price is None:
                raise StripeFault(400, f"You must specify either `price` or `price_data` in {where}.",
                                  code="parameter_missing", param=f"{where}[price_data]")  # fmt: skip
            _unknown(price, PRICE_DATA_PARAMS, f"{where}[price_data]")
            for required in ("currency", "unit_amount"):
                if required not in price:
                    raise StripeFault(400, f"Missing required param: {where}[price_data][{required}].",
                                      code="parameter_missing", param=f"{where}[price_data][{required}]")  # fmt: skip
            unit = _int(price["unit_amount"], f"{where}[price_data][unit_amount]", minimum=0, maximum=99_999_999)
            product = price.get("product_data") or {}
            if not price.get("product") and not product.get("name"):
                name = f"{where}[price_data][product_data][name]"
                raise StripeFault(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
            currencies.add(str(price["currency"]).lower())
            total += unit * quantity
            stored.append({"quantity": quantity, "unit_amount": unit, "currency": str(price["currency"]).lower(),
                           "description": product.get("name")})  # fmt: skip
        if len(currencies) > 1:
            raise StripeFault(400, "All line items must use the same currency.", param="line_items")
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise StripeFault(400, "Invalid object", code="parameter_invalid_object", param="metadata")
        if len(metadata) > 50:
            raise StripeFault(400, "You can specify up to 50 keys in metadata.", param="metadata")
        for key, value in metadata.items():
            if len(key) > 40 or not isinstance(value, str) or len(value) > 500:
                raise StripeFault(400, f"Invalid metadata[{key}]", param=f"metadata[{key}]")
        reference = params.get("client_reference_id")
        if reference is not None and len(reference) > 200:
            raise StripeFault(400, "client_reference_id is too long", param="client_reference_id")
        created = int(self.clock())
        sid = _token("cs_test_", 58)
        session = {
            "id": sid,
            "object": "checkout.session",
            "adaptive_pricing": {"enabled": False},
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": total,
            "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": reference,
            "client_secret": None,
            "created": created,
            "currency": currencies.pop() if currencies else None,
            "customer": params.get("customer"),
            "customer_creation": "if_required",
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "expires_at": created + 24 * 3600,
            "invoice": None,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": dict(metadata),
            "mode": mode,
            "payment_intent": None,
            "payment_method_types": list(params.get("payment_method_types") or ["card"]),
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": params.get("ui_mode", "hosted"),
            "url": f"https://checkout.stripe.com/c/pay/{sid}",
        }
        self.sessions[sid] = session
        self.line_items[sid] = stored
        return session

    def get_session(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            if session_id not in self.sessions:
                raise StripeFault(404, f"No such checkout.session: '{session_id}'", code="resource_missing",
                                  param="session")  # fmt: skip
            return copy.deepcopy(self.sessions[session_id])

    def list_events(self, params: dict[str, Any]) -> dict[str, Any]:
        _unknown(params, EVENT_LIST_PARAMS)
        limit = _int(params.get("limit", 10), "limit", minimum=1, maximum=100)
        limit = min(limit, self.page_cap or limit)
        types: list[str] = []
        if "type" in params:
            types.append(str(params["type"]))
        if "types" in params:
            given = params["types"]
            types += [str(t) for t in (given if isinstance(given, list) else [given])]
        created = params.get("created")
        bounds: dict[str, int] = {}
        if isinstance(created, dict):
            _unknown(created, {"gt", "gte", "lt", "lte"}, "created")
            bounds = {op: _int(v, f"created[{op}]") for op, v in created.items()}
        elif created is not None:
            bounds = {"gte": _int(created, "created"), "lte": _int(created, "created")}

        def matches(event: dict[str, Any]) -> bool:
            if types and not any(_type_matches(t, event["type"]) for t in types):
                return False
            c = event["created"]
            checks = {"gt": c > bounds.get("gt", 0), "gte": c >= bounds.get("gte", 0),
                      "lt": c < bounds.get("lt", 0), "lte": c <= bounds.get("lte", 0)}  # fmt: skip
            return all(checks[op] for op in bounds)

        with self._lock:
            # Newest first; events of the same second keep their order of creation (later = newer).
            order = sorted(enumerate(self.events), key=lambda p: (p[1]["created"], p[0]), reverse=True)
            position = {e["id"]: n for n, (_, e) in enumerate(order)}
            ranked = [(n, e) for n, (_, e) in enumerate(order) if matches(e)]
            after, before = params.get("starting_after"), params.get("ending_before")
            for cursor, name in ((after, "starting_after"), (before, "ending_before")):
                if cursor is not None and cursor not in position:
                    raise StripeFault(404, f"No such event: '{cursor}'", code="resource_missing", param=name)
            if after is not None:
                rest = [e for n, e in ranked if n > position[after]]
                page, has_more = rest[:limit], len(rest) > limit
            elif before is not None:
                rest = [e for n, e in ranked if n < position[before]]
                page, has_more = rest[-limit:], len(rest) > limit
            else:
                page, has_more = [e for _, e in ranked[:limit]], len(ranked) > limit
            return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": "/v1/events"}

    # -- what the customer and Stripe do -----------------------------------------------------------
    def pay(self, session_id: str, mode: str = "immediate", *, created: int | None = None) -> list[dict[str, Any]]:
        """The customer pays: `immediate` (card), `delayed` (bank debit that then succeeds), `pending`."""
        if mode not in ("immediate", "delayed", "pending"):
            raise StripeFault(400, f"unknown payment mode {mode!r}: immediate, delayed or pending", param="mode")
        with self._lock:
            session = self._session(session_id)
            if session["status"] != "open":
                raise StripeFault(400, f"checkout session {session_id} is {session['status']}, not open")
            session.update(status="complete", url=None, payment_intent=_token("pi_"),
                           customer_details={"email": "buyer@example.com", "name": "Test Buyer"},
                           payment_status="paid" if mode == "immediate" else "unpaid")  # fmt: skip
            events = [self._event("checkout.session.completed", session, created)]
            if mode == "delayed":
                session["payment_status"] = "paid"
                events.append(self._event("checkout.session.async_payment_succeeded", session, created))
        self._deliver_all(events)
        return events

    def async_payment(
        self, session_id: str, outcome: str = "succeeded", *, created: int | None = None
    ) -> dict[str, Any]:
        """A delayed payment method (pay mode `pending`) finally succeeds or fails."""
        if outcome not in ("succeeded", "failed"):
            raise StripeFault(400, f"unknown outcome {outcome!r}: succeeded or failed", param="outcome")
        with self._lock:
            session = self._session(session_id)
            if session["status"] != "complete" or session["payment_status"] != "unpaid":
                raise StripeFault(400, f"checkout session {session_id} has no payment pending")
            if outcome == "succeeded":
                session["payment_status"] = "paid"
            event = self._event(f"checkout.session.async_payment_{outcome}", session, created)
        self._deliver_all([event])
        return event

    def expire(self, session_id: str, *, created: int | None = None) -> dict[str, Any]:
        with self._lock:
            session = self._session(session_id)
            if session["status"] != "open":
                raise StripeFault(400, f"checkout session {session_id} is {session['status']}, not open")
            session.update(status="expired", url=None)
            event = self._event("checkout.session.expired", session, created)
        self._deliver_all([event])
        return event

    def add_endpoint(self, url: str, secret: str) -> Endpoint:
        with self._lock:
            endpoint = Endpoint(_token("we_"), url, secret)
            self.endpoints.append(endpoint)
            return endpoint

    def remove_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            self.endpoints[:] = [e for e in self.endpoints if e.id != endpoint_id]

    def resend(self, event_id: str) -> list[dict[str, Any]]:
        with self._lock:
            found = [e for e in self.events if e["id"] == event_id]
        if not found:
            raise StripeFault(404, f"No such event: '{event_id}'", code="resource_missing", param="id")
        return self._deliver_all(found)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy({"sessions": self.sessions, "events": self.events, "deliveries": self.deliveries,
                                  "requests": self.requests, "line_items": self.line_items})  # fmt: skip

    def _session(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise StripeFault(404, f"No such checkout.session: '{session_id}'", code="resource_missing")
        return self.sessions[session_id]

    def _event(self, kind: str, obj: dict[str, Any], created: int | None) -> dict[str, Any]:
        event = {
            "id": _token("evt_"),
            "object": "event",
            "api_version": self.api_version,
            "created": int(self.clock()) if created is None else int(created),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": len(self.endpoints),
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
        self.events.append(event)
        return copy.deepcopy(event)

    def _deliver_all(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Deliver to every endpoint in order, before returning (a test needs no waiting)."""
        with self._lock:
            endpoints = list(self.endpoints)
        results = []
        for event in events:
            for endpoint in endpoints:
                record: dict[str, Any] = {"event": event["id"], "type": event["type"], "endpoint": endpoint.id,
                                          "url": endpoint.url}  # fmt: skip
                try:
                    response = deliver(endpoint.url, event, secret=endpoint.secret)
                    record.update(status=response.status_code, body=response.text)
                except httpx.HTTPError as exc:
                    record.update(status=None, body=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.deliveries.append(record)
                results.append(record)
        return results


def _type_matches(pattern: str, kind: str) -> bool:
    if pattern.endswith(".*"):
        return kind.startswith(pattern[:-1])
    return pattern == kind


# -- the HTTP server ---------------------------------------------------------------------------------
def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Request-Id": _token("req_", 14)})


def build_app(fake: FakeStripe) -> web.Application:
    @web.middleware
    async def stripe_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except StripeFault as fault:
            return _json(fault.body(), fault.status)

    async def api(request: web.Request) -> dict[str, Any]:
        """Authenticate and record a /v1 request; returns its parameters (form body or query)."""
        fake.authenticate(request.headers.get("Authorization"))
        if request.method == "POST":
            pairs = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        else:
            pairs = list(request.query.items())
        params = parse_stripe_form(pairs)
        with fake._lock:
            fake.requests.append({"method": request.method, "path": request.path, "params": params,
                                  "stripe_version": request.headers.get("Stripe-Version"),
                                  "idempotency_key": request.headers.get("Idempotency-Key")})  # fmt: skip
        return params

    async def create_session(request: web.Request) -> web.Response:
        params = await api(request)
        return _json(fake.create_session(params, request.headers.get("Idempotency-Key")))

    async def get_session(request: web.Request) -> web.Response:
        await api(request)
        return _json(fake.get_session(request.match_info["id"]))

    async def list_events(request: web.Request) -> web.Response:
        return _json(fake.list_events(await api(request)))

    async def unknown_api(request: web.Request) -> web.Response:
        fake.authenticate(request.headers.get("Authorization"))
        raise StripeFault(404, f"Unrecognized request URL ({request.method}: {request.path}).")

    async def control(request: web.Request, work: Callable[[], Any]) -> web.Response:
        # Control operations may deliver webhooks (blocking HTTP): off the event loop.
        result = await asyncio.get_running_loop().run_in_executor(None, work)
        return _json(result)

    async def pay(request: web.Request) -> web.Response:
        q = request.query
        created = int(q["created"]) if "created" in q else None
        sid = request.match_info["id"]
        return await control(request, lambda: {"events": fake.pay(sid, q.get("mode", "immediate"), created=created),
                                               "session": fake.get_session(sid)})  # fmt: skip

    async def async_payment(request: web.Request) -> web.Response:
        q, sid = request.query, request.match_info["id"]
        created = int(q["created"]) if "created" in q else None
        return await control(request, lambda: {"event": fake.async_payment(sid, q.get("outcome", "succeeded"),
                                                                           created=created)})  # fmt: skip

    async def expire(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        return await control(request, lambda: {"event": fake.expire(sid)})

    async def add_endpoint(request: web.Request) -> web.Response:
        q = request.query
        if "url" not in q or "secret" not in q:
            raise StripeFault(400, "url and secret are required", code="parameter_missing")
        endpoint = fake.add_endpoint(q["url"], q["secret"])
        return _json({"id": endpoint.id, "url": endpoint.url})

    async def remove_endpoint(request: web.Request) -> web.Response:
        fake.remove_endpoint(request.match_info["id"])
        return _json({"deleted": True})

    async def resend(request: web.Request) -> web.Response:
        eid = request.match_info["id"]
        return await control(request, lambda: {"deliveries": fake.resend(eid)})

    async def state(request: web.Request) -> web.Response:
        return _json(fake.state())

    async def health(request: web.Request) -> web.Response:
        return _json({"ok": True})

    app = web.Application(middlewares=[stripe_errors])
    app.add_routes([
        web.post("/v1/checkout/sessions", create_session),
        web.get("/v1/checkout/sessions/{id}", get_session),
        web.get("/v1/events", list_events),
        web.route("*", "/v1/{tail:.*}", unknown_api),
        web.post("/_test/sessions/{id}/pay", pay),
        web.post("/_test/sessions/{id}/async_payment", async_payment),
        web.post("/_test/sessions/{id}/expire", expire),
        web.post("/_test/webhook_endpoints", add_endpoint),
        web.delete("/_test/webhook_endpoints/{id}", remove_endpoint),
        web.post("/_test/events/{id}/resend", resend),
        web.get("/_test/state", state),
        web.get("/_test/health", health),
    ])  # fmt: skip
    return app


@contextmanager
def running_fake_stripe(
    fake: FakeStripe | None = None, *, host: str = "127.0.0.1", start_timeout_s: float = 10.0
) -> Iterator[FakeStripe]:
    """Serve a FakeStripe on a free loopback port in a background thread; yields it with `base_url` set."""
    fake = fake or FakeStripe()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(build_app(fake), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        box["runner"], box["port"] = runner, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported to the starting thread
            box["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-stripe", daemon=True)
    thread.start()
    if not ready.wait(start_timeout_s):
        raise RuntimeError(f"the fake Stripe server did not start within {start_timeout_s:g} s")
    if "error" in box:
        raise RuntimeError(f"the fake Stripe server failed to start: {box['error']!r}")
    fake.base_url = f"http://{host}:{box['port']}"
    deadline = time.monotonic() + start_timeout_s
    while True:  # bounded readiness poll: the socket accepts and the app answers
        try:
            if httpx.get(f"{fake.base_url}/_test/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fake Stripe server at {fake.base_url} did not answer within {start_timeout_s:g} s")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
