"""Webhook delivery: per-workspace endpoints and `batch.completed` events signed per Standard Webhooks.

Each request carries `webhook-id` (the event id, the same on every retry), `webhook-timestamp`
(unix seconds of the attempt) and `webhook-signature`: `v1,` + base64 of HMAC-SHA256 keyed with
the base64-decoded part of the endpoint's `whsec_...` secret over `{id}.{timestamp}.{body}`.
The body is `{"type": "batch.completed", "timestamp": ISO, "data": {...}}`, `data` holding the
signed batch summary and signed links to the outputs, receipts and summary.

A failed attempt (non-2xx, redirect, timeout, connection error, an address that became private)
is retried on `delivery.retry_schedule_s` (delays before each attempt) as long as the attempt
would start within `delivery.max_total_s`. HTTP 410 disables the endpoint at once; an endpoint
whose last `delivery.disable_after_failed_events` events all exhausted their retries is disabled.
Every attempt is appended to `webhook_attempts`. The event id is derived from the batch and its
signed summary, so delivering the same batch again skips endpoints that already accepted it.

Endpoints resolving to private, loopback, link-local or otherwise non-global addresses, or not at
all, are refused when added and again before every attempt, and each request goes to the address
that was checked (no second DNS lookup to rebind), unless `delivery.allow_private_endpoints`.
Redirects are not followed and proxy environment variables are ignored.

Tables live in the DuckDB file `settings.database`; the functions marked `@served` run in its control
service (`batchrouter.money.control`). Endpoint secrets are stored sealed (`batchrouter.access.vault`).
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
from datetime import UTC, datetime
from typing import Any, TypeVar

import duckdb
import httpx

from batchrouter.access import vault
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import Settings
from batchrouter.core.db import Database
from batchrouter.core.errors import BatchRouterError
from batchrouter.core.storage import Storage
from batchrouter.money.control import served
from batchrouter.output.links import sign_link
from batchrouter.output.summary import write_summary

T = TypeVar("T")

EVENT_TYPE = "batch.completed"
SECRET_PREFIX = "whsec_"
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
"""
_WORKSPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class DeliveryError(BatchRouterError):
    """A webhook operation was refused; `code` is stable."""

    code = "delivery_error"


class EndpointRefused(DeliveryError):
    """The URL is not a usable public http(s) endpoint."""

    code = "endpoint_refused"


class EndpointNotFound(DeliveryError):
    code = "endpoint_not_found"


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


# -- delivery --------------------------------------------------------------------------------------


@dataclass
class _Target:
    endpoint_id: str
    url: str
    secret: str
    attempt: int  # the number of the next attempt (continuing any earlier delivery of the same event)
    step: int  # index into the retry schedule
    due: float  # seconds after delivery began


def _send(
    client: httpx.Client, target: _Target, event_id: str, body: bytes, *, clock: Callable[[], float], allow: bool
) -> tuple[int | None, str | None]:
    """One attempt: (status code, error); the request goes to an address just checked, never a new lookup."""
    try:
        ips = check_url(target.url, allow_private=allow)
    except EndpointRefused as exc:
        return None, f"refused_address: {exc}"
    url = httpx.URL(target.url)
    timestamp = int(clock())
    headers = {
        "content-type": "application/json",
        "user-agent": "BatchRouter-Webhooks/1",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(target.secret, event_id, timestamp, body),
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


@served()
def _record(database: str, attempt: Attempt) -> None:
    _transaction(
        database,
        lambda con: con.execute(
            "INSERT INTO webhook_attempts (event_id, endpoint_id, attempt, \"at\", status_code, error, duration_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [attempt.event_id, attempt.endpoint_id, attempt.attempt, attempt.at, attempt.status_code,
             attempt.error, attempt.duration_ms],
        ),
    )  # fmt: skip


@served()
def _conclude(database: str, endpoint_id: str, *, limit: int, delivered: bool, gone: bool, error: str | None) -> None:
    """After an event's last attempt to an endpoint: reset, count a failed event, or disable."""

    def work(con: duckdb.DuckDBPyConnection) -> None:
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

    _transaction(database, work)


def _targets(settings: Settings, workspace: str, event_id: str, first_due: float) -> list[_Target]:
    """The workspace's enabled endpoints that have not accepted this event yet."""
    return [
        _Target(endpoint_id, url, vault.unseal(settings.database, sealed), done + 1, 0, first_due)
        for endpoint_id, url, sealed, done in _pending(settings.database, workspace, event_id)
    ]


@served(read_only=True)
def _pending(database: str, workspace: str, event_id: str) -> list[tuple[str, str, str, int]]:
    """(endpoint id, url, sealed secret, attempts made) of enabled endpoints that did not accept the event."""

    def work(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str, int]]:
        rows = _rows(
            con,
            "SELECT e.endpoint_id, e.url, e.secret, coalesce(max(a.attempt), 0) AS done, "
            "coalesce(bool_or(a.status_code BETWEEN 200 AND 299), false) AS delivered "
            "FROM webhook_endpoints e LEFT JOIN webhook_attempts a ON a.endpoint_id = e.endpoint_id AND a.event_id = ? "
            "WHERE e.workspace = ? AND e.enabled GROUP BY ALL ORDER BY min(e.created_at), e.endpoint_id",
            [event_id, workspace],
        )
        return [(r["endpoint_id"], r["url"], r["secret"], int(r["done"])) for r in rows if not r["delivered"]]

    return _transaction(database, work)


@served(read_only=True)
def _still_enabled(database: str, endpoint_id: str) -> bool:
    row = _transaction(
        database,
        lambda con: con.execute(
            "SELECT enabled FROM webhook_endpoints WHERE endpoint_id = ?", [endpoint_id]
        ).fetchone(),
    )
    return bool(row and row[0])


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


def deliver_batch_completed(
    settings: Settings,
    storage: Storage,
    info: BatchInfo,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> list[Attempt]:
    """Sign the batch's summary and deliver `batch.completed` to each enabled endpoint of its workspace.

    Synchronous: returns once every endpoint accepted the event, answered 410, or ran out of retries
    (`delivery.retry_schedule_s`, none starting after `delivery.max_total_s`). Endpoints are retried
    side by side, so one slow endpoint does not hold back the others. Waits go through `sleep`, and
    `webhook-timestamp` comes from `clock`. Returns the attempts made by this call.
    """
    config = settings.delivery
    summary = write_summary(settings, storage, info)
    event_id = event_id_for(info, summary)
    schedule = config.retry_schedule_s
    targets = _targets(settings, info.workspace, event_id, schedule[0])
    if not targets:
        return []
    body = json.dumps(
        batch_completed_event(settings, storage, info, summary, now=clock()), separators=(",", ":")
    ).encode()
    made: list[Attempt] = []
    elapsed = 0.0  # the delivery's own timeline: real request time plus every wait handed to `sleep`
    with httpx.Client(timeout=config.timeout_s, follow_redirects=False, trust_env=False) as client:
        while targets:
            target = min(targets, key=lambda t: t.due)
            if target.due > elapsed:
                sleep(target.due - elapsed)
                elapsed = target.due
            if target.step > 0 and not _still_enabled(settings.database, target.endpoint_id):
                targets.remove(target)  # disabled or removed while waiting
                continue
            started = time.monotonic()
            code, error = _send(client, target, event_id, body, clock=clock, allow=config.allow_private_endpoints)
            took = time.monotonic() - started
            elapsed += took
            attempt = Attempt(
                event_id, target.endpoint_id, target.attempt, datetime.now(UTC), code, error, round(took * 1000)
            )
            _record(settings.database, attempt)
            made.append(attempt)
            target.attempt += 1
            target.step += 1
            last = (
                attempt.ok
                or code == 410
                or target.step >= len(schedule)
                or elapsed + schedule[target.step] > config.max_total_s
            )
            if last:
                _conclude(settings.database, target.endpoint_id, limit=config.disable_after_failed_events,
                          delivered=attempt.ok, gone=code == 410, error=error)  # fmt: skip
                targets.remove(target)
            else:
                target.due = elapsed + schedule[target.step]
    return made
