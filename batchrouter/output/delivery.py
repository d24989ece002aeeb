"""Webhook delivery: per-workspace endpoints and `batch.completed` events signed per Standard Webhooks.

Each request carries `webhook-id` (the event id, the same on every retry), `webhook-timestamp`
(unix seconds of the attempt) and `webhook-signature`: `v1,` + base64 of HMAC-SHA256 keyed with
the base64-decoded part of the endpoint's `whsec_...` secret over `{id}.{timestamp}.{body}`.
The body is `{"type": "batch.completed", "timestamp": ISO, "data": {...}}`, `data` holding the
signed batch summary and signed links to the outputs, receipts and summary.

Delivery goes through an outbox, so nothing waits for a slow or dead endpoint:

- `enqueue_batch_completed` stores the event (its body, sent byte for byte on every attempt) and one
  delivery per enabled endpoint of the workspace, in one transaction. The event id is derived from the
  batch and its signed summary, so enqueueing the same batch again adds nothing for endpoints that
  already have the event (a delivery that ran out of retries starts a new round of the schedule).
- `drain` sends every due delivery once, never sleeping: it claims one delivery at a time with a lease
  (one transaction), sends it, then records the attempt and schedules the next one (another
  transaction). Drains in several processes never send the same due attempt twice; a drain that dies
  mid-send leaves its lease to expire, after which another drain sends that attempt again (the same
  `webhook-id`, so receivers deduplicate). A schedule or sensor calls it every minute.
- `deliver_batch_completed` is enqueue + one drain of that event, with a short timeout.

A failed attempt (non-2xx, redirect, timeout, connection error, an address that became private) is
retried on `delivery.retry_schedule_s` (delays before each attempt, counted from the end of the
previous one) as long as the attempt would start within `delivery.max_total_s` of the enqueue. HTTP
410 disables the endpoint at once; an endpoint whose last `delivery.disable_after_failed_events`
events all exhausted their retries is disabled. Every attempt is appended to `webhook_attempts`.

Endpoints resolving to private, loopback, link-local or otherwise non-global addresses, or not at
all, are refused when added and again before every attempt, and each request goes to the address
that was checked (no second DNS lookup to rebind), unless `delivery.allow_private_endpoints`.
Redirects are not followed and proxy environment variables are ignored.

Tables live in the DuckDB file `settings.database`; the functions marked `@served` run in its control
service (`batchrouter.core.control`). Endpoint secrets are stored sealed (`batchrouter.access.vault`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import duckdb
import httpx

from batchrouter.access import vault
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import Settings
from batchrouter.core.control import served
from batchrouter.core.db import Database
from batchrouter.core.errors import DeliveryError as DeliveryError
from batchrouter.core.errors import EndpointNotFound as EndpointNotFound
from batchrouter.core.errors import EndpointRefused as EndpointRefused
from batchrouter.core.storage import Storage
from batchrouter.output.links import sign_link
from batchrouter.output.summary import write_summary

T = TypeVar("T")

EVENT_TYPE = "batch.completed"
SECRET_PREFIX = "whsec_"
INLINE_TIMEOUT_S = 2.0  # `deliver_batch_completed`'s one try; later tries (drains) use `delivery.timeout_s`
DRAIN_LIMIT = 500  # deliveries one drain sends at most; the rest wait for the next drain
DeliveryState = Literal["pending", "delivered", "failed", "gone"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id VARCHAR PRIMARY KEY,
    workspace VARCHAR NOT NULL,
    url VARCHAR NOT NULL,
    secret VARCHAR NOT NULL,
    enabled BOOLEAN NOT NULL,
    disabled_reason VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    failures INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    event_id VARCHAR NOT NULL,
    endpoint_id VARCHAR NOT NULL,
    attempt INTEGER NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,  -- quoted: AT is a keyword in DuckDB
    status_code INTEGER,
    error VARCHAR,
    duration_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_events (
    event_id VARCHAR PRIMARY KEY,
    workspace VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    body VARCHAR NOT NULL,  -- sent byte for byte on every attempt
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    event_id VARCHAR NOT NULL,
    endpoint_id VARCHAR NOT NULL,
    state VARCHAR NOT NULL,  -- pending, delivered, failed (retries exhausted), gone (answered 410)
    attempts INTEGER NOT NULL,  -- made so far, in every round: the number of the last attempt
    step INTEGER NOT NULL,  -- attempts made in this round: the index into the retry schedule
    round_started_at TIMESTAMPTZ NOT NULL,  -- `delivery.max_total_s` counts from here
    next_attempt_at TIMESTAMPTZ,  -- NULL unless pending
    lease_until TIMESTAMPTZ,  -- a drain is sending it until then
    lease_token VARCHAR,
    PRIMARY KEY (event_id, endpoint_id)
);
"""
_WORKSPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Endpoint:
    """A registered endpoint as listed (its secret is shown once, by `add_endpoint`)."""

    endpoint_id: str
    workspace: str
    url: str
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    failures: int  # consecutive events that exhausted their retries


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded in `webhook_attempts`."""

    event_id: str
    endpoint_id: str
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one endpoint, as stored in the outbox (`webhook_deliveries`)."""

    event_id: str
    endpoint_id: str
    state: DeliveryState
    attempts: int  # made so far
    next_attempt_at: datetime | None  # when a drain sends it next; None unless pending


# -- the database ----------------------------------------------------------------------------------


def _transaction(database: str, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    return Database(database, schema=SCHEMA).transaction(work)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


_ENDPOINT_COLUMNS = "endpoint_id, workspace, url, enabled, disabled_reason, created_at, failures"


def _endpoint(row: dict[str, Any]) -> Endpoint:
    return Endpoint(**{k: row[k] for k in _ENDPOINT_COLUMNS.split(", ")})


# -- signing ---------------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh endpoint secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The Standard Webhooks `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise DeliveryError("a webhook secret is `whsec_` followed by base64") from exc
    payload = body.encode() if isinstance(body, str) else body
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# -- addresses -------------------------------------------------------------------------------------


def _is_public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def check_url(url: str, *, allow_private: bool) -> list[str]:
    """The addresses a webhook URL resolves to, all of them public unless `allow_private`.

    Raises:
        EndpointRefused: not http(s), credentials in the URL, unresolvable, or a non-public address.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise EndpointRefused(f"{url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise EndpointRefused(f"{url!r} is not an http:// or https:// URL")
    if parsed.userinfo:
        raise EndpointRefused(f"{url!r} carries credentials; the webhook signature authenticates the sender")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointRefused(f"the host of {url!r} does not resolve: {exc}") from exc
    ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not ips:
        raise EndpointRefused(f"the host of {url!r} does not resolve")
    if not allow_private:
        private = [ip for ip in ips if not _is_public(ip)]
        if private:
            raise EndpointRefused(
                f"{url!r} resolves to a private, loopback, link-local or reserved address ({', '.join(private)}); "
                "use a public endpoint (delivery.allow_private_endpoints = true is for local development only)"
            )
    return ips


# -- endpoints -------------------------------------------------------------------------------------


def add_endpoint(settings: Settings, workspace: str, url: str) -> tuple[str, str]:
    """Register a webhook endpoint for a workspace; returns `(endpoint_id, secret)`. The secret is shown once.

    Raises:
        EndpointRefused: the URL is not a usable public endpoint (see `check_url`).
    """
    if not _WORKSPACE.fullmatch(workspace):
        raise DeliveryError(f"workspace {workspace!r} is not a valid name")
    check_url(url, allow_private=settings.delivery.allow_private_endpoints)
    endpoint_id, secret = f"ep_{uuid.uuid4().hex}", new_secret()
    _insert_endpoint(settings.database, endpoint_id, workspace, url, vault.seal(settings.database, secret))
    return endpoint_id, secret


@served()
def _insert_endpoint(database: str, endpoint_id: str, workspace: str, url: str, sealed: str) -> None:
    _transaction(
        database,
        lambda con: con.execute(
            "INSERT INTO webhook_endpoints (endpoint_id, workspace, url, secret, enabled, disabled_reason, "
            "created_at, failures) VALUES (?, ?, ?, ?, true, NULL, ?, 0)",
            [endpoint_id, workspace, url, sealed, datetime.now(UTC)],
        ),
    )


def list_endpoints(settings: Settings, workspace: str) -> list[Endpoint]:
    """The workspace's endpoints, oldest first, without their secrets."""
    return _endpoints(settings.database, workspace)


@served(read_only=True)
def _endpoints(database: str, workspace: str) -> list[Endpoint]:
    return _transaction(
        database,
        lambda con: [
            _endpoint(r)
            for r in _rows(
                con,
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace = ? ORDER BY created_at, "
                "endpoint_id",
                [workspace],
            )
        ],
    )


def _require_endpoint(con: duckdb.DuckDBPyConnection, workspace: str, endpoint_id: str) -> None:
    found = con.execute(
        "SELECT 1 FROM webhook_endpoints WHERE endpoint_id = ? AND workspace = ?", [endpoint_id, workspace]
    ).fetchone()
    if found is None:
        raise EndpointNotFound(f"workspace {workspace} has no webhook endpoint {endpoint_id}")


def remove_endpoint(settings: Settings, workspace: str, endpoint_id: str) -> None:
    """Delete one of the workspace's endpoints (its recorded attempts stay).

    Raises:
        EndpointNotFound: no such endpoint in this workspace.
    """
    _remove_endpoint(settings.database, workspace, endpoint_id)


@served()
def _remove_endpoint(database: str, workspace: str, endpoint_id: str) -> None:
    def work(con: duckdb.DuckDBPyConnection) -> None:
        _require_endpoint(con, workspace, endpoint_id)
        con.execute("DELETE FROM webhook_endpoints WHERE endpoint_id = ?", [endpoint_id])

    _transaction(database, work)


def enable_endpoint(settings: Settings, workspace: str, endpoint_id: str) -> None:
    """Turn a disabled endpoint back on, with its failure count reset.

    Raises:
        EndpointNotFound: no such endpoint in this workspace.
    """
    _enable_endpoint(settings.database, workspace, endpoint_id)


@served()
def _enable_endpoint(database: str, workspace: str, endpoint_id: str) -> None:
    def work(con: duckdb.DuckDBPyConnection) -> None:
        _require_endpoint(con, workspace, endpoint_id)
        con.execute(
            "UPDATE webhook_endpoints SET enabled = true, disabled_reason = NULL, failures = 0 WHERE endpoint_id = ?",
            [endpoint_id],
        )

    _transaction(database, work)


def list_attempts(settings: Settings, *, endpoint_id: str | None = None, event_id: str | None = None) -> list[Attempt]:
    """Recorded attempts, in the order they were made, optionally of one endpoint and/or one event."""
    return _attempts(settings.database, endpoint_id, event_id)


@served(read_only=True)
def _attempts(database: str, endpoint_id: str | None, event_id: str | None) -> list[Attempt]:
    return _transaction(
        database,
        lambda con: [
            Attempt(**r)
            for r in _rows(
                con,
                'SELECT event_id, endpoint_id, attempt, "at", status_code, error, duration_ms FROM webhook_attempts '
                'WHERE (? IS NULL OR endpoint_id = ?) AND (? IS NULL OR event_id = ?) ORDER BY "at", attempt',
                [endpoint_id, endpoint_id, event_id, event_id],
            )
        ],
    )


# -- the outbox ------------------------------------------------------------------------------------


def event_id_for(info: BatchInfo, summary: dict[str, Any]) -> str:
    """Stable for the same batch results: a redelivery is recognisably the same event."""
    digest = hashlib.sha256(f"{EVENT_TYPE}\n{info.batch_id}\n{summary['signature']}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def batch_completed_event(
    settings: Settings, storage: Storage, info: BatchInfo, summary: dict[str, Any], *, now: float
) -> dict[str, Any]:
    """The `batch.completed` body: the signed summary and signed links to the artifacts."""
    expires_s = settings.delivery.link_expires_s
    links = {
        name.split(".", 1)[0]: sign_link(
            settings, storage, info.workspace, info.batch_id, name, expires_s=expires_s, now=now
        )
        for name in ("outputs.parquet", "receipts.parquet", "summary.json")
    }
    return {
        "type": EVENT_TYPE,
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "data": {
            "batch_id": info.batch_id,
            "workspace": info.workspace,
            "summary": summary,
            "links": links,
            "links_expire_at": datetime.fromtimestamp(int(now) + expires_s, UTC).isoformat(timespec="seconds"),
        },
    }


def enqueue_batch_completed(
    settings: Settings, storage: Storage, info: BatchInfo, *, now: datetime | None = None
) -> str:
    """Sign the batch's summary and store `batch.completed` for each enabled endpoint of its workspace.

    Idempotent per (event, endpoint): an endpoint that already has this event gets nothing new, except
    that a delivery which ran out of retries (or answered 410 before the endpoint was enabled again)
    starts a new round of the schedule. Sends nothing; returns the event id.
    """
    at = now or datetime.now(UTC)
    summary = write_summary(settings, storage, info)
    event_id = event_id_for(info, summary)
    event = batch_completed_event(settings, storage, info, summary, now=at.timestamp())
    body = json.dumps(event, separators=(",", ":"))
    first_due = at + timedelta(seconds=settings.delivery.retry_schedule_s[0])
    _enqueue(settings.database, event_id, info.workspace, info.batch_id, body, at, first_due)
    return event_id


@served()
def _enqueue(
    database: str, event_id: str, workspace: str, batch_id: str, body: str, at: datetime, first_due: datetime
) -> None:
    def work(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "INSERT INTO webhook_events (event_id, workspace, batch_id, body, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [event_id, workspace, batch_id, body, at],
        )
        # Attempts recorded before the outbox existed count: an endpoint that accepted the event is done.
        con.execute(
            "INSERT INTO webhook_deliveries (event_id, endpoint_id, state, attempts, step, round_started_at, "
            "next_attempt_at) "
            "SELECT ?, e.endpoint_id, if(bool_or(coalesce(a.status_code BETWEEN 200 AND 299, false)), "
            "'delivered', 'pending'), coalesce(max(a.attempt), 0), 0, ?, "
            "if(bool_or(coalesce(a.status_code BETWEEN 200 AND 299, false)), NULL, ?::TIMESTAMPTZ) "
            "FROM webhook_endpoints e LEFT JOIN webhook_attempts a ON a.endpoint_id = e.endpoint_id AND a.event_id = ? "
            "WHERE e.workspace = ? AND e.enabled GROUP BY e.endpoint_id "
            "ON CONFLICT DO NOTHING",
            [event_id, at, first_due, event_id, workspace],
        )
        con.execute(
            "UPDATE webhook_deliveries SET state = 'pending', step = 0, round_started_at = ?, next_attempt_at = ?, "
            "lease_until = NULL, lease_token = NULL "
            "WHERE event_id = ? AND state IN ('failed', 'gone') "
            "AND endpoint_id IN (SELECT endpoint_id FROM webhook_endpoints WHERE workspace = ? AND enabled)",
            [at, first_due, event_id, workspace],
        )

    _transaction(database, work)


def list_deliveries(
    settings: Settings, *, endpoint_id: str | None = None, event_id: str | None = None
) -> list[Delivery]:
    """The outbox, oldest event first, optionally of one endpoint and/or one event."""
    return _deliveries(settings.database, endpoint_id, event_id)


@served(read_only=True)
def _deliveries(database: str, endpoint_id: str | None, event_id: str | None) -> list[Delivery]:
    return _transaction(
        database,
        lambda con: [
            Delivery(**r)
            for r in _rows(
                con,
                "SELECT d.event_id, d.endpoint_id, d.state, d.attempts, d.next_attempt_at FROM webhook_deliveries d "
                "JOIN webhook_events v USING (event_id) WHERE (? IS NULL OR d.endpoint_id = ?) "
                "AND (? IS NULL OR d.event_id = ?) ORDER BY v.created_at, d.event_id, d.endpoint_id",
                [endpoint_id, endpoint_id, event_id, event_id],
            )
        ],
    )


def next_due(settings: Settings) -> datetime | None:
    """When the earliest pending delivery to an enabled endpoint is due (None: nothing to send)."""
    return _next_due(settings.database)


@served(read_only=True)
def _next_due(database: str) -> datetime | None:
    row = _transaction(
        database,
        lambda con: con.execute(
            "SELECT min(d.next_attempt_at) FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id) "
            "WHERE d.state = 'pending' AND e.enabled"
        ).fetchone(),
    )
    return row[0] if row else None


@dataclass(frozen=True)
class _Claim:
    """A due delivery a drain holds the lease of, with what sending it needs."""

    event_id: str
    endpoint_id: str
    url: str
    secret: str  # sealed
    body: str
    attempt: int  # the number of this attempt


@served()
def _claim(
    database: str, token: str, *, due_by: datetime, now: datetime, lease_until: datetime, event_id: str | None
) -> _Claim | None:
    """Lease the earliest delivery due by `due_by` that no live lease holds (one transaction)."""

    def work(con: duckdb.DuckDBPyConnection) -> _Claim | None:
        rows = _rows(
            con,
            "SELECT d.event_id, d.endpoint_id, e.url, e.secret, v.body, d.attempts + 1 AS attempt "
            "FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id) "
            "JOIN webhook_events v USING (event_id) "
            "WHERE d.state = 'pending' AND e.enabled AND d.next_attempt_at <= ? "
            "AND (d.lease_until IS NULL OR d.lease_until < ?) AND (? IS NULL OR d.event_id = ?) "
            "ORDER BY d.next_attempt_at, e.created_at, d.endpoint_id LIMIT 1",
            [due_by, now, event_id, event_id],
        )
        if not rows:
            return None
        claim = _Claim(**rows[0])
        # Writing the row is the conflict point: of two drains claiming it at once, one commits.
        con.execute(
            "UPDATE webhook_deliveries SET lease_until = ?, lease_token = ? WHERE event_id = ? AND endpoint_id = ?",
            [lease_until, token, claim.event_id, claim.endpoint_id],
        )
        return claim

    return _transaction(database, work)


@served()
def _finish(
    database: str, attempt: Attempt, token: str, *, ended: datetime, schedule: list[float], max_total_s: float,
    limit: int,
) -> None:  # fmt: skip
    """Record an attempt and schedule the next one, or conclude the delivery (one transaction)."""

    def work(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "INSERT INTO webhook_attempts (event_id, endpoint_id, attempt, \"at\", status_code, error, duration_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [attempt.event_id, attempt.endpoint_id, attempt.attempt, attempt.at, attempt.status_code,
             attempt.error, attempt.duration_ms],
        )  # fmt: skip
        row = con.execute(
            "SELECT step, round_started_at FROM webhook_deliveries WHERE event_id = ? AND endpoint_id = ? "
            "AND state = 'pending' AND lease_token = ?",
            [attempt.event_id, attempt.endpoint_id, token],
        ).fetchone()
        if row is None:  # our lease expired and another drain took the delivery over: its answer counts
            return
        step, started = int(row[0]) + 1, row[1]
        gone = attempt.status_code == 410
        state: DeliveryState = "pending"
        next_at: datetime | None = None
        if attempt.ok:
            state = "delivered"
        elif gone:
            state = "gone"
        elif step >= len(schedule) or (ended - started).total_seconds() + schedule[step] > max_total_s:
            state = "failed"
        else:
            next_at = ended + timedelta(seconds=schedule[step])
        con.execute(
            "UPDATE webhook_deliveries SET state = ?, attempts = ?, step = ?, next_attempt_at = ?, lease_until = NULL, "
            "lease_token = NULL WHERE event_id = ? AND endpoint_id = ?",
            [state, attempt.attempt, step, next_at, attempt.event_id, attempt.endpoint_id],
        )
        if state != "pending":
            _conclude(con, attempt.endpoint_id, limit=limit, delivered=attempt.ok, gone=gone, error=attempt.error)

    _transaction(database, work)


def _conclude(
    con: duckdb.DuckDBPyConnection, endpoint_id: str, *, limit: int, delivered: bool, gone: bool, error: str | None
) -> None:
    """After an event's last attempt to an endpoint: reset, count a failed event, or disable."""
    row = con.execute("SELECT failures FROM webhook_endpoints WHERE endpoint_id = ?", [endpoint_id]).fetchone()
    if row is None:  # removed meanwhile
        return
    if delivered:
        con.execute("UPDATE webhook_endpoints SET failures = 0 WHERE endpoint_id = ?", [endpoint_id])
        return
    failures = int(row[0]) + 1
    reason = None
    if gone:
        reason = "the endpoint answered 410 Gone"
    elif failures >= limit:
        reason = f"{failures} consecutive events failed after every retry (last: {error})"
    con.execute(
        "UPDATE webhook_endpoints SET failures = ?, enabled = ?, disabled_reason = coalesce(?, disabled_reason) "
        "WHERE endpoint_id = ?",
        [failures, reason is None, reason, endpoint_id],
    )


def _send(
    client: httpx.Client, url_text: str, secret: str, event_id: str, body: bytes, *, allow: bool
) -> tuple[int | None, str | None]:
    """One attempt: (status code, error); the request goes to an address just checked, never a new lookup."""
    try:
        ips = check_url(url_text, allow_private=allow)
    except EndpointRefused as exc:
        return None, f"refused_address: {exc}"
    url = httpx.URL(url_text)
    timestamp = int(time.time())  # the receiver checks it against its own clock
    headers = {
        "content-type": "application/json",
        "user-agent": "BatchRouter-Webhooks/1",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event_id, timestamp, body),
        "host": url.netloc.decode("ascii"),
    }
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    for n, ip in enumerate(ips):
        try:
            with client.stream(
                "POST", url.copy_with(host=ip), content=body, headers=headers, extensions=extensions
            ) as response:
                code = response.status_code
        except httpx.ConnectError as exc:
            if n + 1 < len(ips):
                continue  # the next address of the host (IPv6 and IPv4, several A records)
            return None, f"connection_error: {type(exc).__name__}: {exc}"
        except httpx.TimeoutException as exc:
            return None, f"timeout: {type(exc).__name__}"
        except httpx.TransportError as exc:
            return None, f"connection_error: {type(exc).__name__}: {exc}"
        return code, None if 200 <= code < 300 else f"http_{code}"
    raise AssertionError("check_url returns at least one address")  # pragma: no cover


def drain(
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = DRAIN_LIMIT,
    event_id: str | None = None,
    timeout_s: float | None = None,
) -> list[Attempt]:
    """Send every delivery due at `now` once (at most `limit`), record each attempt and schedule the next.

    Never sleeps: a delivery that fails waits in the outbox for a later drain. `now` (default: the
    clock) is where this drain's timeline starts: what is due, and when next attempts fall, are
    reckoned on it, so a test moves it forward instead of waiting. `event_id` sends only that event;
    `timeout_s` (default `delivery.timeout_s`) bounds each request. Returns the attempts made, in order.
    """
    config = settings.delivery
    timeout = config.timeout_s if timeout_s is None else timeout_s
    start, began = now or datetime.now(UTC), time.monotonic()

    def clock() -> datetime:
        return start + timedelta(seconds=time.monotonic() - began)

    # Long enough for the request on every address of a host; a drain that dies frees its claim then.
    lease = timedelta(seconds=60 + 8 * timeout)
    token = uuid.uuid4().hex
    made: list[Attempt] = []
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        while len(made) < limit:
            at = clock()
            claim = _claim(settings.database, token, due_by=start, now=at, lease_until=at + lease, event_id=event_id)
            if claim is None:
                break
            secret = vault.unseal(settings.database, claim.secret)
            sent = time.monotonic()
            code, error = _send(
                client, claim.url, secret, claim.event_id, claim.body.encode(), allow=config.allow_private_endpoints
            )
            attempt = Attempt(
                claim.event_id,
                claim.endpoint_id,
                claim.attempt,
                at,
                code,
                error,
                round((time.monotonic() - sent) * 1000),
            )
            _finish(settings.database, attempt, token, ended=clock(), schedule=list(config.retry_schedule_s),
                    max_total_s=config.max_total_s, limit=config.disable_after_failed_events)  # fmt: skip
            made.append(attempt)
    return made


def deliver_batch_completed(
    settings: Settings, storage: Storage, info: BatchInfo, *, now: datetime | None = None
) -> list[Attempt]:
    """Enqueue the batch's `batch.completed` event and try each of its due deliveries once, now.

    Never sleeps and never waits longer than one short request per endpoint: what fails is retried
    by later drains (`drain`, the Dagster outbox sensor). Returns the attempts made by this call.
    """
    event_id = enqueue_batch_completed(settings, storage, info, now=now)
    return drain(settings, now=now, event_id=event_id, timeout_s=min(settings.delivery.timeout_s, INLINE_TIMEOUT_S))


def _secrets(settings: Settings, workspace: str) -> list[str]:
    """The unsealed secrets of the workspace's enabled endpoints (what a drain signs with)."""
    return [vault.unseal(settings.database, sealed) for sealed in _sealed(settings.database, workspace)]


@served(read_only=True)
def _sealed(database: str, workspace: str) -> list[str]:
    return _transaction(
        database,
        lambda con: [
            str(r[0])
            for r in con.execute(
                "SELECT secret FROM webhook_endpoints WHERE workspace = ? AND enabled ORDER BY created_at, endpoint_id",
                [workspace],
            ).fetchall()
        ],
    )
