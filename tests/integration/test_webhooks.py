"""Webhook delivery over real HTTP to receivers on loopback: signatures, the outbox and its drains, disabling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import polars as pl
import pytest

from batchrouter.batches.lifecycle import submit
from batchrouter.core import control
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import DeliveryConfig, Settings, load_settings
from batchrouter.core.storage import Storage
from batchrouter.output.delivery import (
    Attempt,
    EndpointNotFound,
    EndpointRefused,
    add_endpoint,
    deliver_batch_completed,
    drain,
    enable_endpoint,
    enqueue_batch_completed,
    list_attempts,
    list_deliveries,
    list_endpoints,
    new_secret,
    next_due,
    remove_endpoint,
    sign,
)
from batchrouter.output.links import resolve_link
from batchrouter.output.summary import verify_batch_dir

pytestmark = pytest.mark.integration

SCHEDULE = [0.0, 1.0, 2.0, 4.0]
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def reference_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks signing, written from the spec independently of batchrouter.output.delivery."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_") :])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def receiver_accepts(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver checks: fresh timestamp and one of the space-separated signatures matches."""
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = reference_signature(secret, headers["webhook-id"], timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split(" "))


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A webhook receiver on loopback answering a scripted sequence of status codes, then `default`."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    hang_first_s: float = 0.0  # hold the first request this long (longer than the client's timeout)
    hold_s: float = 0.0  # hold every request this long before answering
    received: list[Received] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)  # webhook-id -> times processed (deduplicated)
    secret: str | None = None
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        first = not self.received
        code = self.script.pop(0) if self.script else self.default
        self.received.append(Received(headers, body, code))
        if first and self.hang_first_s:
            self.release.wait(self.hang_first_s)
        if self.hold_s:
            self.release.wait(self.hold_s)
        if 200 <= code < 300 and self.secret and receiver_accepts(self.secret, headers, body):
            msg_id = headers["webhook-id"]
            self.accepted[msg_id] = self.accepted.get(msg_id, 0) + 1
        return code


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            code = state.handle({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/batchrouter"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_settings(**delivery: Any) -> Settings:
    options: dict[str, Any] = {
        "allow_private_endpoints": True,
        "retry_schedule_s": SCHEDULE,
        "timeout_s": 2.0,
        "disable_after_failed_events": 2,
        "api_base": "http://api.test",
        **delivery,
    }
    return load_settings(delivery=DeliveryConfig(**options))


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings.storage)


def make_batch(storage: Storage, name: str = "orders.csv", workspace: str = "acme") -> BatchInfo:
    info = submit(storage, workspace=workspace, source_name=name, data=f"item_id,model,prompt\n{name},m,p\n".encode())
    storage.write_parquet(pl.DataFrame({"item_id": ["a"], "output_text": ["hi"]}), *info.folder("outputs.parquet"))
    storage.write_parquet(
        pl.DataFrame({"item_id": ["a"], "status": ["succeeded"], "reserve_usd_micros": [9], "cost_usd_micros": [4]}),
        *info.folder("receipts.parquet"),
    )
    storage.write_json({"quote_id": "q1"}, *info.folder("quote.json"))
    return info


@pytest.fixture
def batch(storage: Storage) -> BatchInfo:
    return make_batch(storage)


def register(settings: Settings, receiver: Receiver, workspace: str = "acme") -> str:
    endpoint_id, secret = add_endpoint(settings, workspace, receiver.url)
    receiver.secret = secret
    return endpoint_id


def endpoint(settings: Settings, endpoint_id: str, workspace: str = "acme") -> Any:
    return next(e for e in list_endpoints(settings, workspace) if e.endpoint_id == endpoint_id)


# -- signing ---------------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE
    assert reference_signature(SPEC_SECRET, SPEC_ID, str(SPEC_TIMESTAMP), SPEC_PAYLOAD.encode()) == SPEC_SIGNATURE


def test_sign_matches_the_independent_implementation_for_fresh_secrets() -> None:
    for n in range(20):
        secret, body = new_secret(), json.dumps({"n": n, "text": 'é\n"x"'}).encode()
        assert sign(secret, f"msg_{n}", 1_700_000_000 + n, body) == reference_signature(
            secret, f"msg_{n}", str(1_700_000_000 + n), body
        )


def test_new_secret_is_whsec_and_at_least_24_random_bytes() -> None:
    secrets_seen = {new_secret() for _ in range(50)}
    assert len(secrets_seen) == 50
    for secret in secrets_seen:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24


# -- delivery --------------------------------------------------------------------------------------


def drain_due(settings: Settings) -> list[Attempt]:
    """One drain at the moment the earliest pending delivery falls due (moves time on instead of sleeping)."""
    due = next_due(settings)
    return [] if due is None else drain(settings, now=due)


def drain_until_settled(settings: Settings, *, rounds: int = 20) -> list[Attempt]:
    made: list[Attempt] = []
    for _ in range(rounds):
        if next_due(settings) is None:
            return made
        made += drain_due(settings)
    raise AssertionError(f"deliveries still pending after {rounds} drains: {list_deliveries(settings)}")


def refused_url() -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def test_delivery_sends_a_verifiable_batch_completed_event(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    endpoint_id = register(settings, receiver)
    attempts = deliver_batch_completed(settings, storage, batch)
    assert [(a.endpoint_id, a.attempt, a.status_code, a.error) for a in attempts] == [(endpoint_id, 1, 200, None)]
    (request,) = receiver.received
    assert request.headers["webhook-id"] == attempts[0].event_id
    assert request.headers["content-type"] == "application/json"
    assert receiver_accepts(receiver.secret or "", request.headers, request.body)
    assert receiver.accepted == {attempts[0].event_id: 1}
    event = json.loads(request.body)
    assert event["type"] == "batch.completed"
    assert event["timestamp"].endswith("+00:00")
    data = event["data"]
    assert data["batch_id"] == batch.batch_id and data["workspace"] == "acme"
    assert data["summary"] == storage.read_json(*batch.folder("summary.json"))
    assert data["summary"]["counts"]["succeeded"] == 1
    assert verify_batch_dir(storage.path(*batch.folder())).ok
    for name, artifact in (("outputs", "outputs.parquet"), ("receipts", "receipts.parquet")):
        link = urlsplit(data["links"][name])
        assert link.netloc == "api.test"
        workspace, batch_id, file = link.path.split("/")[-3:]
        query = parse_qs(link.query)
        key = resolve_link(settings, storage, workspace, batch_id, file, query["expires"][0], query["sig"][0])
        assert key == f"batches/{batch.batch_id}/{artifact}"
    (delivery,) = list_deliveries(settings)
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("delivered", 1, None)
    assert next_due(settings) is None


@pytest.mark.parametrize("dead", ["refuses", "answers 500"])
def test_a_dead_endpoint_gets_one_attempt_and_a_scheduled_retry_then_a_later_drain_delivers(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver, dead: str
) -> None:
    if dead == "refuses":
        endpoint_id, receiver.secret = add_endpoint(settings, "acme", refused_url())
    else:
        receiver.default = 500
        endpoint_id = register(settings, receiver)
    (attempt,) = deliver_batch_completed(settings, storage, batch)
    assert (attempt.attempt, attempt.ok) == (1, False)
    (delivery,) = list_deliveries(settings, endpoint_id=endpoint_id)
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert delivery.next_attempt_at is not None
    wait = delivery.next_attempt_at - attempt.at
    assert timedelta(seconds=SCHEDULE[1]) <= wait < timedelta(seconds=SCHEDULE[1] + 60)
    assert drain(settings, now=delivery.next_attempt_at - timedelta(milliseconds=1)) == []  # not due yet
    if dead == "refuses":
        return  # the receiver answering 500 below comes back
    receiver.default = 200
    (later,) = drain(settings, now=delivery.next_attempt_at)
    assert (later.attempt, later.status_code, later.event_id) == (2, 200, attempt.event_id)
    assert receiver.accepted == {attempt.event_id: 1}
    assert list_deliveries(settings, endpoint_id=endpoint_id)[0].state == "delivered"
    assert drain_until_settled(settings) == []


def test_flaky_receiver_gets_three_attempts_with_the_same_webhook_id_and_accepts_once(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    receiver.script = [500, 503]
    endpoint_id = register(settings, receiver)
    attempts = deliver_batch_completed(settings, storage, batch) + drain_until_settled(settings)
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, 500, "http_500"),
        (2, 503, "http_503"),
        (3, 200, None),
    ]
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {attempts[0].event_id}
    assert {r.body for r in receiver.received} == {receiver.received[0].body}
    assert all(receiver_accepts(receiver.secret or "", r.headers, r.body) for r in receiver.received)
    assert receiver.accepted == {attempts[0].event_id: 1}
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert all(gap >= delay for gap, delay in zip(gaps, SCHEDULE[1:], strict=False))
    assert endpoint(settings, endpoint_id).failures == 0 and endpoint(settings, endpoint_id).enabled


def test_every_attempt_is_recorded(settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver) -> None:
    receiver.script = [500, 502]
    endpoint_id = register(settings, receiver)
    attempts = deliver_batch_completed(settings, storage, batch) + drain_until_settled(settings)
    recorded = list_attempts(settings, endpoint_id=endpoint_id)
    assert [(a.event_id, a.attempt, a.status_code, a.error) for a in recorded] == [
        (a.event_id, a.attempt, a.status_code, a.error) for a in attempts
    ]
    assert [a.status_code for a in recorded] == [r.answered for r in receiver.received] == [500, 502, 200]
    assert all(a.duration_ms >= 0 and a.at is not None for a in recorded)
    control.stop(settings.database)  # read the file itself: its owner lets go of it first
    with duckdb.connect(settings.database, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM webhook_attempts").fetchone() == (3,)


def test_receiver_answering_410_disables_the_endpoint_after_one_attempt(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    receiver.default = 410
    endpoint_id = register(settings, receiver)
    attempts = deliver_batch_completed(settings, storage, batch)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 410)]
    gone = endpoint(settings, endpoint_id)
    assert not gone.enabled and "410" in (gone.disabled_reason or "")
    assert [d.state for d in list_deliveries(settings)] == ["gone"]
    assert deliver_batch_completed(settings, storage, make_batch(storage, "later.csv")) == []
    assert drain_until_settled(settings) == []
    assert len(receiver.received) == 1


def test_persistent_500_disables_after_the_configured_number_of_failed_events(
    settings: Settings, storage: Storage, receiver: Receiver
) -> None:
    receiver.default = 500
    endpoint_id = register(settings, receiver)
    first = deliver_batch_completed(settings, storage, make_batch(storage, "one.csv")) + drain_until_settled(settings)
    assert len(first) == len(SCHEDULE)
    after_one = endpoint(settings, endpoint_id)
    assert after_one.enabled and after_one.failures == 1
    assert [d.state for d in list_deliveries(settings)] == ["failed"]
    second = deliver_batch_completed(settings, storage, make_batch(storage, "two.csv")) + drain_until_settled(settings)
    assert len(second) == len(SCHEDULE)
    disabled = endpoint(settings, endpoint_id)
    assert not disabled.enabled and disabled.failures == 2
    assert "2 consecutive events failed" in (disabled.disabled_reason or "")
    assert deliver_batch_completed(settings, storage, make_batch(storage, "three.csv")) == []
    assert len(receiver.received) == len(list_attempts(settings, endpoint_id=endpoint_id)) == 2 * len(SCHEDULE)


def test_a_delivered_event_resets_the_failure_count(settings: Settings, storage: Storage, receiver: Receiver) -> None:
    receiver.script = [500] * len(SCHEDULE)
    endpoint_id = register(settings, receiver)
    deliver_batch_completed(settings, storage, make_batch(storage, "one.csv"))
    drain_until_settled(settings)
    assert endpoint(settings, endpoint_id).failures == 1
    deliver_batch_completed(settings, storage, make_batch(storage, "two.csv"))
    assert endpoint(settings, endpoint_id).failures == 0


def test_a_reenabled_endpoint_receives_events_again(settings: Settings, storage: Storage, receiver: Receiver) -> None:
    receiver.script = [410]
    endpoint_id = register(settings, receiver)
    deliver_batch_completed(settings, storage, make_batch(storage, "one.csv"))
    enable_endpoint(settings, "acme", endpoint_id)
    attempts = deliver_batch_completed(settings, storage, make_batch(storage, "two.csv"))
    assert [a.status_code for a in attempts] == [200]
    assert endpoint(settings, endpoint_id).enabled


def test_timeouts_and_connection_errors_are_retried(storage: Storage, batch: BatchInfo, receiver: Receiver) -> None:
    settings = make_settings(timeout_s=0.3)
    receiver.hang_first_s = 5.0
    hanging = register(settings, receiver)
    dead, _ = add_endpoint(settings, "acme", refused_url())
    attempts = deliver_batch_completed(settings, storage, batch)
    assert sorted(a.endpoint_id for a in attempts) == sorted([hanging, dead])  # one try each, nothing waits
    attempts += drain_until_settled(settings)
    to_hanging = [a for a in attempts if a.endpoint_id == hanging]
    assert [(a.status_code, (a.error or "").split(":")[0]) for a in to_hanging] == [(None, "timeout"), (200, "")]
    to_dead = [a for a in attempts if a.endpoint_id == dead]
    assert len(to_dead) == len(SCHEDULE)
    assert all(a.status_code is None and (a.error or "").startswith("connection_error") for a in to_dead)
    assert {r.headers["webhook-id"] for r in receiver.received} == {attempts[0].event_id}


def test_a_failing_endpoint_does_not_hold_back_the_others(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    dead, _ = add_endpoint(settings, "acme", refused_url())
    healthy = register(settings, receiver)
    attempts = deliver_batch_completed(settings, storage, batch)
    assert [a.endpoint_id for a in attempts] == [dead, healthy]
    assert [a.status_code for a in attempts if a.endpoint_id == healthy] == [200]


def test_total_time_bound_stops_the_retries(storage: Storage, batch: BatchInfo, receiver: Receiver) -> None:
    settings = make_settings(max_total_s=2.5)
    receiver.default = 500
    endpoint_id = register(settings, receiver)
    attempts = deliver_batch_completed(settings, storage, batch) + drain_until_settled(settings)
    assert len(attempts) == 2  # at 0 s and 1 s; the next (at 3 s) would start after the 2.5 s bound
    assert endpoint(settings, endpoint_id).failures == 1


def test_redelivering_the_same_batch_skips_endpoints_that_accepted_it(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    register(settings, receiver)
    first = deliver_batch_completed(settings, storage, batch)
    assert deliver_batch_completed(settings, storage, batch) == []
    assert len(receiver.received) == 1 and receiver.accepted == {first[0].event_id: 1}


def test_enqueueing_the_same_event_again_adds_no_delivery(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    endpoint_id = register(settings, receiver)
    event_id = enqueue_batch_completed(settings, storage, batch)
    assert enqueue_batch_completed(settings, storage, batch) == event_id
    assert receiver.received == []  # enqueueing sends nothing
    assert [(d.event_id, d.endpoint_id, d.state) for d in list_deliveries(settings)] == [
        (event_id, endpoint_id, "pending")
    ]
    assert [a.status_code for a in drain(settings)] == [200]
    enqueue_batch_completed(settings, storage, batch)
    assert drain_until_settled(settings) == []
    assert receiver.accepted == {event_id: 1}


def test_two_processes_draining_at_once_send_each_delivery_once(
    storage: Storage, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_DELIVERY__ALLOW_PRIVATE_ENDPOINTS", "true")
    settings = load_settings()
    receiver.hold_s = 0.05  # each answer takes a while, so the drains overlap
    endpoints = [add_endpoint(settings, "acme", receiver.url)[0] for _ in range(4)]
    events = [enqueue_batch_completed(settings, storage, make_batch(storage, f"b{n}.csv")) for n in range(3)]
    script = "from batchrouter.core.config import load_settings\n" \
             "from batchrouter.output.delivery import drain\n" \
             "print(len(drain(load_settings())))\n"  # fmt: skip
    drains = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        for _ in range(2)
    ]
    sent = [int(p.communicate(timeout=180)[0].strip() or -1) for p in drains]
    assert all(p.returncode == 0 for p in drains)
    assert sum(sent) == len(endpoints) * len(events) == len(receiver.received)
    made = list_attempts(settings)
    assert sorted((a.event_id, a.endpoint_id) for a in made) == sorted(
        (event, ep) for event in events for ep in endpoints
    )
    assert all(d.state == "delivered" for d in list_deliveries(settings))


def test_changed_results_are_a_new_event(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    register(settings, receiver)
    first = deliver_batch_completed(settings, storage, batch)
    storage.write_parquet(pl.DataFrame({"item_id": ["a"], "output_text": ["redone"]}), *batch.folder("outputs.parquet"))
    second = deliver_batch_completed(settings, storage, batch)
    assert len(second) == 1 and second[0].event_id != first[0].event_id


def test_delivery_goes_only_to_the_batch_workspace(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    register(settings, receiver, workspace="other")
    assert deliver_batch_completed(settings, storage, batch) == []
    assert receiver.received == []


def test_no_endpoints_means_no_attempts(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    assert deliver_batch_completed(settings, storage, batch) == []
    assert drain(settings) == []


# -- endpoints -------------------------------------------------------------------------------------


def test_endpoints_are_listed_without_secrets_and_removed_per_workspace(settings: Settings, receiver: Receiver) -> None:
    endpoint_id = register(settings, receiver)
    (listed,) = list_endpoints(settings, "acme")
    assert (listed.endpoint_id, listed.url, listed.enabled, listed.failures) == (endpoint_id, receiver.url, True, 0)
    assert not hasattr(listed, "secret")
    assert list_endpoints(settings, "other") == []
    with pytest.raises(EndpointNotFound):
        remove_endpoint(settings, "other", endpoint_id)
    remove_endpoint(settings, "acme", endpoint_id)
    assert list_endpoints(settings, "acme") == []
    with pytest.raises(EndpointNotFound):
        remove_endpoint(settings, "acme", endpoint_id)


REFUSED = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.10/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://no-such-host.invalid/hook",
    "ftp://93.184.215.14/hook",
    "http://user:password@93.184.215.14/hook",
    "not a url",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_loopback_link_local_and_unresolvable_urls_are_refused(url: str) -> None:
    settings = make_settings(allow_private_endpoints=False)
    with pytest.raises(EndpointRefused) as caught:
        add_endpoint(settings, "acme", url)
    assert caught.value.code == "endpoint_refused"
    assert list_endpoints(settings, "acme") == []


def test_public_address_is_accepted() -> None:
    settings = make_settings(allow_private_endpoints=False)
    endpoint_id, secret = add_endpoint(settings, "acme", "https://93.184.215.14/hook")
    assert endpoint_id.startswith("ep_") and secret.startswith("whsec_")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/hook"])
def test_private_urls_are_accepted_when_allowed(url: str) -> None:
    endpoint_id, _ = add_endpoint(make_settings(allow_private_endpoints=True), "acme", url)
    assert endpoint_id.startswith("ep_")


def test_unresolvable_url_is_refused_even_when_private_urls_are_allowed() -> None:
    with pytest.raises(EndpointRefused):
        add_endpoint(make_settings(allow_private_endpoints=True), "acme", "http://no-such-host.invalid/hook")


def test_private_endpoint_is_refused_again_at_delivery(storage: Storage, batch: BatchInfo, receiver: Receiver) -> None:
    endpoint_id = register(make_settings(allow_private_endpoints=True), receiver)
    strict = make_settings(allow_private_endpoints=False)
    attempts = deliver_batch_completed(strict, storage, batch) + drain_until_settled(strict)
    assert len(attempts) == len(SCHEDULE)
    assert all(a.status_code is None and (a.error or "").startswith("refused_address") for a in attempts)
    assert receiver.received == []
    assert endpoint(strict, endpoint_id).failures == 1


def test_request_goes_to_the_checked_address_with_the_original_host_header(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver
) -> None:
    port = urlsplit(receiver.url).port
    _, receiver.secret = add_endpoint(settings, "acme", f"http://localhost:{port}/hooks/batchrouter")
    attempts = deliver_batch_completed(settings, storage, batch)
    assert [a.status_code for a in attempts] == [200]
    (request,) = receiver.received
    assert request.headers["host"] == f"localhost:{port}"
    assert receiver.accepted == {attempts[0].event_id: 1}


def test_the_next_address_is_tried_when_the_first_refuses_connections(
    settings: Settings, storage: Storage, batch: BatchInfo, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def two_addresses(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "multi.test":
            return real(host, port, *args, **kwargs)
        # 127.0.0.2 is loopback too, but the receiver listens on 127.0.0.1 only: connections there are refused.
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.2", "127.0.0.1")]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    port = urlsplit(receiver.url).port
    _, receiver.secret = add_endpoint(settings, "acme", f"http://multi.test:{port}/hooks/batchrouter")
    attempts = deliver_batch_completed(settings, storage, batch)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 200)]
    assert receiver.received[0].headers["host"] == f"multi.test:{port}"


def test_the_cli_drains_the_outbox_once_the_endpoint_is_back(
    tmp_path: Any, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchrouter.cli import main

    config = tmp_path / "batchrouter.toml"
    config.write_text(
        "[delivery]\nallow_private_endpoints = true\nretry_schedule_s = [0.0, 0.2, 0.4, 0.8]\ntimeout_s = 2.0\n"
        'api_base = "http://api.test"\n'
    )
    settings = load_settings(str(config))
    batch = make_batch(Storage(settings.storage))
    receiver.default = 500
    register(settings, receiver)
    (first,) = deliver_batch_completed(settings, Storage(settings.storage), batch)
    assert not first.ok
    receiver.default = 200
    deadline, sent = time.monotonic() + 60, []
    while not any(a["ok"] for a in sent) and time.monotonic() < deadline:  # due 0.2 s after the first try
        assert main(["webhooks", "drain", "--config", str(config), "--json"]) == 0
        sent += json.loads(capsys.readouterr().out)
    assert [(a["event_id"], a["attempt"], a["status_code"]) for a in sent if a["ok"]] == [(first.event_id, 2, 200)]
    assert receiver.accepted == {first.event_id: 1}
