"""What the OpenAI drop-in tests share: batch lines, the real app on loopback with SDK keys, polling."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import OpenAI
from serving import serve

from batchrouter.access.accounts import Accounts
from batchrouter.core.config import Settings, load_settings
from batchrouter.money.ledger import Ledger

SCOPES = ["batches:read", "batches:write", "credits:read"]
USD = 1_000_000
RUN_DEADLINE_S = float(os.environ.get("DROPIN_RUN_DEADLINE_S", "240"))
FINAL = ("completed", "failed", "expired", "cancelled")
ASAP = {"br_deadline": "asap"}  # every item online at once: the test does not wait on provider batches


def request(custom_id: str, model: str, text: str, *, url: str = "/v1/chat/completions") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 20}
    if url == "/v1/responses":
        body = {"model": model, "input": text, "max_output_tokens": 20}
    else:
        body["messages"] = [{"role": "user", "content": text}]
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


@dataclass
class Server:
    url: str
    settings: Settings
    key: str
    other_key: str

    def client(self, key: str | None = None, **options: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, **options)


def key_for(accounts: Accounts, workspace: str) -> str:
    accounts.set_member(workspace, f"owner@{workspace}.test", "owner", actor="test")
    key, _ = accounts.create_key(workspace, name="sdk", scopes=SCOPES, created_by=f"owner@{workspace}.test",
                                 actor="test")  # fmt: skip
    return key


def start_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The app with the inline executor; workspaces acme and globex hold 5 USD each (settings from the env)."""
    # Workspace "cautious" approves nothing above one micro-dollar by itself.
    monkeypatch.setenv("BATCHROUTER_WORKSPACES__CAUTIOUS__AUTO_APPROVE_MAX_USD", "0.000001")
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_BURST", "100000")
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_PER_MINUTE", "100000")
    monkeypatch.setenv("BATCHROUTER_API__EXECUTOR", "inline")
    settings = load_settings()
    accounts = Accounts(settings.database)
    key, other = key_for(accounts, "acme"), key_for(accounts, "globex")
    Ledger(settings.database).grant("acme", 5 * USD, key="grant-acme")
    Ledger(settings.database).grant("globex", 5 * USD, key="grant-globex")
    for url in serve(settings):
        yield Server(url, settings, key, other)


def wait_done(client: OpenAI, batch_id: str, *, deadline_s: float = RUN_DEADLINE_S) -> Any:
    """The batch once final; the test fails if it is not within `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} is still {batch.status} after {deadline_s:g} s"
        time.sleep(0.2)  # poll interval
