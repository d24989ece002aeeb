"""The real API app under uvicorn on a free loopback port, in a thread, for tests that talk HTTP to it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Literal

import httpx
import uvicorn

from batchrouter.api import create_app
from batchrouter.core.config import Settings

START_DEADLINE_S = 60


def serve(settings: Settings, *, lifespan: Literal["on", "off"] = "on") -> Iterator[str]:
    """Run the app until the generator is closed; yields its base URL once `/healthz` answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)  # poll interval, not synchronisation: the deadline above bounds the wait
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
