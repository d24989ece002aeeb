"""A create whose response is lost on the wire: the server made the batch, the client never heard.

Between the official SDK and `batchrouter serve` sits a proxy on loopback that forwards every request
and, for the first batch create, reads the server's whole answer and then closes the connection
without a byte of it. The SDK sees the connection drop and sends the same POST again, as it does
(no idempotency key of its own): the retry must answer the batch the first request made, with one
reservation, never a second batch.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from anthropic import Anthropic
from dropin_sdk import ASAP, Server, jsonl, request, start_api
from openai import OpenAI

from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class Lossy:
    """A proxy in front of `upstream` that loses the first answer to `POST <drop_path>`."""

    upstream: str
    drop_path: str
    lost: list[tuple[int, bytes]] = field(default_factory=list)  # (status, body) the client never got
    seen: list[str] = field(default_factory=list)  # the requests forwarded, "METHOD path"
    url: str = ""


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from start_api(monkeypatch)


def lossy(api: Server, drop_path: str) -> Iterator[Lossy]:
    state = Lossy(api.url, drop_path)
    forward = httpx.Client(base_url=api.url, timeout=60)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
            answer = forward.request(self.command, self.path, content=body, headers=headers)
            with lock:
                state.seen.append(f"{self.command} {self.path}")
                drop = self.command == "POST" and self.path == state.drop_path and not state.lost
                if drop:
                    state.lost.append((answer.status_code, answer.content))
            if drop:  # the server answered; the client gets nothing and the connection goes
                self.close_connection = True
                return
            self.send_response(answer.status_code)
            for k, v in answer.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("content-length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_DELETE = _relay

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        forward.close()


def test_an_openai_create_whose_answer_was_lost_is_retried_into_the_same_batch(api: Server) -> None:
    for proxy in lossy(api, "/v1/batches"):
        client = OpenAI(base_url=f"{proxy.url}/v1", api_key=api.key, max_retries=3)
        data = jsonl([request("l-1", "gpt-4o-mini", "Say this is a test."), request("l-2", "claude-haiku-5-5", "Hi.")])
        uploaded = client.files.create(file=("lost.jsonl", data), purpose="batch")

        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata=ASAP)  # fmt: skip

        ((status, body),) = proxy.lost
        assert status == 201 and httpx.Response(status, content=body).json()["id"] == batch.id
        assert proxy.seen.count("POST /v1/batches") == 2  # the SDK sent it again
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert len(Ledger(api.settings.database).batch_holds(batch.id)) == 1


def test_an_anthropic_create_whose_answer_was_lost_is_retried_into_the_same_batch(api: Server) -> None:
    for proxy in lossy(api, "/v1/messages/batches"):
        sdk = Anthropic(base_url=proxy.url, api_key=api.key, max_retries=3)
        requests: list[Any] = [{"custom_id": "l-1", "params": {"model": "claude-haiku-5-5", "max_tokens": 20,
                                "messages": [{"role": "user", "content": "Name a colour."}]}}]  # fmt: skip

        batch = sdk.messages.batches.create(requests=requests, extra_headers={"x-batchrouter-deadline": "asap"})

        ((status, body),) = proxy.lost
        assert status == 200 and httpx.Response(status, content=body).json()["id"] == batch.id
        assert proxy.seen.count("POST /v1/messages/batches") == 2
        assert [b.id for b in sdk.messages.batches.list()] == [batch.id]
        assert len(Ledger(api.settings.database).batch_holds(batch.id)) == 1
