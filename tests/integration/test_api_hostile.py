"""The API server for real, on loopback: bounded bodies, hostile uploads, parallel creates from one
quote, the inline executor running with the server's own settings, and batches nobody runs."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import serve

from batchrouter.access.accounts import Accounts
from batchrouter.batches.settlement import sweep
from batchrouter.core.config import Settings, StorageConfig, load_settings
from batchrouter.core.storage import Storage
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

ALL_SCOPES = ["batches:read", "batches:write", "credits:read", "credits:write", "admin"]
CSV = b"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,Say this is a test!,20\n2,gpt-4o-mini,Name a colour.,20\n"
USD = 1_000_000
RUN_DEADLINE_S = 180.0


@dataclass
class Server:
    url: str
    settings: Settings
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def quote(self, data: bytes = CSV) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/v1/quotes?filename=m.csv", content=data, headers=self.headers, timeout=60)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())


def _server(settings: Settings) -> Iterator[Server]:
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    key, _ = accounts.create_key("acme", name="k", scopes=ALL_SCOPES, created_by="owner@acme.test", actor="test")
    Ledger(settings.database).grant("acme", 5 * USD, key="grant")
    for url in serve(settings, lifespan="off"):
        yield Server(url, settings, key)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_BURST", "100000")
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_PER_MINUTE", "100000")
    monkeypatch.setenv("BATCHROUTER_API__MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("BATCHROUTER_API__MAX_UPLOAD_BYTES", "1000000")
    yield from _server(load_settings())


# -- bounded bodies ---------------------------------------------------------------------------------
def _raw_request(url: str, head: str) -> bytes:
    """Send only a request head (no body) and read what the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_declared_huge_upload_is_refused_413_before_any_byte_is_read(api: Server) -> None:
    head = (f"POST /v1/quotes?filename=m.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key}\r\n"
            f"Content-Length: {10**12}\r\n\r\n")  # fmt: skip
    answer = _raw_request(api.url, head)  # no body is ever sent: a server that waited for it would time out
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_an_unsigned_webhook_declaring_a_huge_body_is_refused_without_reading_it(api: Server) -> None:
    head = f"POST /v1/stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n"
    assert _raw_request(api.url, head).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/batches", b'{"quote_id": "' + b"q" * 10_000 + b'"}', {}),
        ("/v1/quotes?filename=m.csv", b"x" * 1_000_001, {}),
        ("/v1/quotes?filename=m.csv", gzip.compress(b"item_id,model,prompt\n" + b"x" * 5_000_000),
         {"Content-Encoding": "gzip"}),
        ("/v1/keys", b'{"name": "' + b"n" * 5000 + b'", "scopes": ["admin"]}', {}),
    ],
    ids=["json body", "upload", "gzip bomb", "keys body"],
)  # fmt: skip
def test_a_body_past_its_limit_answers_413_naming_the_limit(
    api: Server, path: str, body: bytes, headers: dict[str, str]
) -> None:
    answer = httpx.post(f"{api.url}{path}", content=body, headers={**api.headers, **headers}, timeout=60)
    assert answer.status_code == 413, answer.text
    assert "limit of" in answer.json()["error"]["message"]


def test_a_chunked_upload_past_the_limit_answers_413(api: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(2000):
            yield b"x" * 1000

    answer = httpx.post(f"{api.url}/v1/quotes?filename=m.csv", content=chunks(), headers=api.headers, timeout=60)
    assert answer.status_code == 413


def test_a_gzip_upload_within_the_limit_is_quoted(api: Server) -> None:
    answer = httpx.post(f"{api.url}/v1/quotes?filename=m.csv", content=gzip.compress(CSV),
                        headers={**api.headers, "Content-Encoding": "gzip"}, timeout=60)  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert answer.json()["accepted"] == 2


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("m.jsonl", b'{"custom_id": "1", "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("m.csv", "item_id,model,prompt\n1,gpt-4o-mini,hi\n".encode("utf-16")),
        ("m.csv", b"item_id,model,prompt,Prompt\n1,gpt-4o-mini,a,b\n"),
        ("m.parquet", b"PAR1" + b"\x00" * 100 + b"PAR1"),
        ("m.jsonl", b'{"custom_id": "\\ud800", "body": {"model": "gpt-4o-mini", "messages": []}}'),
        ("m.csv", b"\xff\xfe\x00garbage"),
    ],
)
def test_hostile_uploads_answer_201_or_422_never_500(api: Server, name: str, body: bytes) -> None:
    answer = httpx.post(f"{api.url}/v1/quotes?filename={name}", content=body, headers=api.headers, timeout=60)
    assert answer.status_code in (201, 422), answer.text


# -- parallel creates from one quote ------------------------------------------------------------------
def test_parallel_creates_from_one_quote_make_one_batch_and_one_reservation(api: Server) -> None:
    quote = api.quote()
    threads, barrier = 12, threading.Barrier(12)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        answer = httpx.post(f"{api.url}/v1/batches", json={"quote_id": quote["quote_id"]}, headers=api.headers,
                            timeout=120)  # fmt: skip
        with lock:
            answers.append(answer)

    workers = [threading.Thread(target=create) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    codes = sorted(a.status_code for a in answers)
    assert codes.count(201) == 1 and set(codes) <= {200, 201, 409}, [a.text for a in answers]
    batch_ids = {a.json()["batch_id"] for a in answers if a.status_code in (200, 201)}
    assert len(batch_ids) == 1
    (batch_id,) = batch_ids
    ledger = Ledger(api.settings.database)
    assert [h.batch_id for h in ledger.batch_holds(batch_id)] == [batch_id]
    assert [e["op"] for e in ledger.history("acme")] == ["grant", "reserve"]
    assert ledger.balance("acme").held_usd_micros == quote["reserve_usd_micros"]


def test_a_run_tag_creates_a_second_batch_from_the_same_quote(api: Server) -> None:
    quote_id = api.quote()["quote_id"]
    first = httpx.post(f"{api.url}/v1/batches", json={"quote_id": quote_id}, headers=api.headers, timeout=60)
    again = httpx.post(f"{api.url}/v1/batches", json={"quote_id": quote_id, "run_tag": "second"},
                       headers=api.headers, timeout=60)  # fmt: skip
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json()["batch_id"] != again.json()["batch_id"]
    bad = httpx.post(f"{api.url}/v1/batches", json={"quote_id": quote_id, "run_tag": "../x"}, headers=api.headers,
                     timeout=60)  # fmt: skip
    assert bad.status_code == 422


# -- nobody runs it: the status says so, and the sweeper releases the hold --------------------------------
def test_a_batch_no_executor_runs_says_so_and_the_sweeper_releases_its_hold(api: Server) -> None:
    quote = api.quote()
    created = httpx.post(f"{api.url}/v1/batches", json={"quote_id": quote["quote_id"]}, headers=api.headers,
                         timeout=60).json()  # fmt: skip
    assert created["state"] == "reserved"
    assert "Dagster manifest sensor" in created["message"] and "sweeper" in created["message"]
    storage = Storage(api.settings.storage)
    assert sweep(storage, api.settings, stale_after=timedelta(hours=1)) == []  # not stale yet
    swept = sweep(storage, api.settings, stale_after=timedelta(0))
    assert swept == [{"hold": created["batch_id"], "released_usd_micros": quote["reserve_usd_micros"]}]
    status = httpx.get(f"{api.url}/v1/batches/{created['batch_id']}", headers=api.headers, timeout=60).json()
    assert status["state"] == status["status"] == "failed" and status["holds"][0]["status"] == "expired"
    balance = Ledger(api.settings.database).balance("acme")
    assert (balance.available_usd_micros, balance.held_usd_micros) == (5 * USD, 0)


# -- the inline executor uses the server's settings ------------------------------------------------------
def test_the_inline_executor_runs_with_the_servers_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_BURST", "100000")
    settings = load_settings().model_copy(update={
        "storage": StorageConfig(root=str(tmp_path / "server-bucket")),
        "database": str(tmp_path / "server.duckdb"),
    })  # fmt: skip
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"executor": "inline"})})
    # The environment now points somewhere else: a run that re-read it would never find the batch.
    monkeypatch.setenv("BATCHROUTER_STORAGE__ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("BATCHROUTER_DATABASE", str(tmp_path / "elsewhere.duckdb"))
    monkeypatch.setenv("BATCHROUTER_API__EXECUTOR", "sensor")
    for server in _server(settings):
        quote = server.quote()
        created = httpx.post(f"{server.url}/v1/batches", json={"quote_id": quote["quote_id"]},
                             headers=server.headers, timeout=60).json()  # fmt: skip
        deadline = time.monotonic() + RUN_DEADLINE_S
        while True:
            status = httpx.get(f"{server.url}/v1/batches/{created['batch_id']}", headers=server.headers,
                               timeout=60).json()  # fmt: skip
            if status["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # poll interval
        assert status["status"] == "completed", status
        assert status["items_by_status"] == {"succeeded": 2}
    assert not (tmp_path / "elsewhere").exists()
