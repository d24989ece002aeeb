"""The drop-ins' lists over many finished batches: OpenAI's `GET /v1/batches` (and a retrieve) and
Anthropic's `GET /v1/messages/batches`, before and after it paged on the batches' records.

Builds `--batches` batches (default 200) of a few lines each in one workspace, run to completed on the
built-in simulator in this process (with a second workspace holding as many, which a list must skip),
then serves the real app under uvicorn on loopback and, through the official `openai` SDK:

- lists the workspace's batches, the first page (20, the default) and every page (`limit=100`,
  auto-paging), twice: the first time after the batches ended, and again;
- retrieves one finished batch three times (the first retrieve writes its output and error files);
- lists them through the official `anthropic` SDK, the first page (20) and every page (`limit=100`,
  and the SDK's default 20, auto-paging): "after" with the Anthropic face as it is (paged on the
  batches' records, only the page described) and "before" with its list swapped for the one it
  replaced (every batch of the workspace described on every page; `describing_every_batch`
  below), alternately, and prints the ratio of the best of each.

Each figure is the best of `--rounds` on the same data (the folder is built once and kept while the
script runs), in seconds.

    .venv/bin/python benchmarks/dropin_list.py [--batches N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(batches: int) -> str:
    """Make the batches; returns the id of the oldest in workspace acme."""
    from batchrouter.access.actors import CLI
    from batchrouter.core.config import load_settings
    from batchrouter.engine import BatchRouter
    from batchrouter.simulator import running_simulator

    settings = load_settings()
    engine = BatchRouter(settings)
    made = ""
    with running_simulator(settings.simulator.model_copy(update={"latency_ms": 0})) as url:
        for workspace in ("acme", "globex"):
            engine.ledger.grant(workspace, 50_000_000, key=f"grant-{workspace}")
            for n in range(batches):
                lines = [{"custom_id": f"{n}-{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                                   "messages": [{"role": "user", "content": f"{workspace} batch {n} line {i}"}]}}
                         for i in range(3)]  # fmt: skip
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                view = engine.batches.create(data, filename=f"b{n}.jsonl", workspace=workspace, actor=CLI,
                                             approve=True)  # fmt: skip
                engine.batches.advance(view.batch_id, simulator_url=url)
                made = made or view.batch_id
    return made


def serve(folder: Path) -> tuple[str, object, threading.Thread]:
    import uvicorn

    from batchrouter.api import create_app
    from batchrouter.core.config import load_settings

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(load_settings()), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    import httpx

    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url, server, thread
        except httpx.TransportError:
            time.sleep(0.05)


def describing_every_batch(
    self: Any, workspace: str, *, after_id: str | None = None, before_id: str | None = None, limit: int = 20,
    base_url: str = "",
) -> Any:  # fmt: skip
    """`AnthropicBatches.list` as it was before it paged on the records: every batch described, then paged."""
    from batchrouter.core.errors import InvalidRequest
    from batchrouter.core.paging import page
    from batchrouter.dropin.anthropic import MessageBatchPage

    views = [v for v in reversed(self._engine.batches.list(workspace)) if not self._deleted(v.batch_id)]
    if after_id and before_id:
        raise InvalidRequest("after_id and before_id: give one of them", param="after_id")
    chosen = page(views, key=lambda v: v.batch_id, after=after_id, before=before_id, limit=limit)
    data = [self.describe(v, base_url=base_url) for v in chosen.items]
    return MessageBatchPage(data=data, has_more=chosen.has_more, first_id=data[0].id if data else None,
                            last_id=data[-1].id if data else None)  # fmt: skip


def anthropic_steps(url: str, key: str, batches: int) -> list[tuple[str, Callable[[], object]]]:
    """Anthropic's list, first page and every page, before and after (alternately: the same load on both)."""
    import anthropic

    from batchrouter.dropin.anthropic import AnthropicBatches

    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=600)
    client.messages.batches.list(limit=1)  # warm: the client's connection
    paged = AnthropicBatches.list

    def as_(variant: str, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            AnthropicBatches.list = describing_every_batch if variant == "before" else paged  # type: ignore[method-assign]
            try:
                return call()
            finally:
                AnthropicBatches.list = paged  # type: ignore[method-assign]

        return run

    def first() -> object:
        return client.messages.batches.list()

    def every(limit: int) -> Callable[[], object]:
        def run() -> object:
            found = list(client.messages.batches.list(limit=limit))
            assert len(found) == batches, len(found)
            return found

        return run

    steps = []
    for n in (1, 2):
        for variant in ("before", "after"):
            steps.append((f"anthropic first page (20) {variant}, time {n}", as_(variant, first)))
    for n in (1, 2):
        for variant in ("before", "after"):
            steps.append((f"anthropic all {batches} (limit 100) {variant}, time {n}", as_(variant, every(100))))
    for variant in ("before", "after"):  # the SDK's default auto-paging: 20 a page
        steps.append((f"anthropic all {batches} (limit 20) {variant}", as_(variant, every(20))))
    return steps


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dropin-list-"))
    built = base / "built"
    os.environ["BATCHROUTER_API__RATE_LIMIT_BURST"] = "1000000"
    os.environ["BATCHROUTER_API__RATE_LIMIT_PER_MINUTE"] = "1000000"
    os.environ["BATCHROUTER_API__EXECUTOR"] = "inline"
    try:
        os.environ["BATCHROUTER_STORAGE__ROOT"] = str(built / "bucket")
        os.environ["BATCHROUTER_DATABASE"] = str(built / "batchrouter.duckdb")
        built.mkdir()
        start = time.perf_counter()
        oldest = build(args.batches)
        print(f"built {args.batches} finished batches per workspace in {time.perf_counter() - start:.1f} s")
        from batchrouter.access.accounts import Accounts
        from batchrouter.core import control

        accounts = Accounts(str(built / "batchrouter.duckdb"))
        accounts.set_member("acme", "o@acme.test", "owner", actor="bench")
        key, _ = accounts.create_key("acme", name="bench", scopes=["batches:read", "batches:write"],
                                     created_by="o@acme.test", actor="bench")  # fmt: skip
        control.stop(str(built / "batchrouter.duckdb"))
        results: dict[str, list[float]] = {}
        for r in range(args.rounds):
            run = base / f"run{r}"
            shutil.copytree(built, run, ignore=shutil.ignore_patterns("*.control.*"))
            os.environ["BATCHROUTER_STORAGE__ROOT"] = str(run / "bucket")
            os.environ["BATCHROUTER_DATABASE"] = str(run / "batchrouter.duckdb")
            from openai import OpenAI

            url, server, thread = serve(run)
            client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
            client.files.list()  # warm: the client's connection and the server's first request
            steps = [(f"retrieve the oldest final batch, time {n}", lambda c=client: c.batches.retrieve(oldest))
                     for n in (1, 2, 3)]  # fmt: skip
            for n in (1, 2):
                steps.append((f"list the first page (20), time {n}", lambda c=client: c.batches.list()))
            for n in (1, 2):
                steps.append((f"list all {args.batches} (limit 100), time {n}",
                              lambda c=client: list(c.batches.list(limit=100))))  # fmt: skip
            steps.extend(anthropic_steps(url, key, args.batches))
            for name, call in steps:
                results.setdefault(name, []).append(timed(call))
            assert len(list(client.batches.list(limit=100))) == args.batches
            server.should_exit = True  # type: ignore[attr-defined]
            thread.join(timeout=60)
            control.stop(str(run / "batchrouter.duckdb"))
        for name, values in results.items():
            print(f"{name:48s} best {min(values):.3f} s   all {', '.join(f'{v:.3f}' for v in values)}")
        for what in ("first page (20)", f"all {args.batches} (limit 100)", f"all {args.batches} (limit 20)"):
            before = min(v for k, vs in results.items() if k.startswith(f"anthropic {what} before") for v in vs)
            after = min(v for k, vs in results.items() if k.startswith(f"anthropic {what} after") for v in vs)
            print(f"anthropic {what}: before {before:.3f} s, after {after:.3f} s, before/after {before / after:.1f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
