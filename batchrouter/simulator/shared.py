"""The built-in simulator of a deployment: one long-lived process that every run, sensor and API shares.

A provider's batches outlive the run that made them: a run submits them and ends, and a later run, the
provider-batch sensor or `batchrouter serve` collects them. So a simulator provider without a
`base_url` is not served by a simulator of the run's own (its batches would die with the run) but by
this one, found beside the database:

    <database>.simulator-<key>.json   its URL and pid (0600); <key> names the simulator settings
    <database>.simulator-<key>.lock   held (fcntl) by the process while it runs: exactly one starts
    <database>.simulator-<key>.log    what it did

The first process that needs it starts it detached (`core.detached`); it stays while any provider
batch's end has not been shown to a client yet (running, or ended since the last look), and exits
once it has been `BATCHROUTER_SIMULATOR_IDLE_S` seconds (default 300; 0 never) without a request
with none such, or a week without any request, or when its discovery file is removed or names
another process. Changed `[simulator]` settings make another key, so a new simulator; the old one
ends as above. Its state lives in memory, like a provider's: a machine restart loses the provider
batches it held, and the runs that wait on them see them gone and send their lines online.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from batchrouter.core import db, detached, retry
from batchrouter.core.config import SimulatorConfig
from batchrouter.core.errors import ServiceUnavailable

DEFAULT_IDLE_S = 300.0
HOLD_S = 7 * 86_400.0  # a stuck batch nobody asks about any more does not hold the process for ever
START_TIMEOUT_S = 60.0

log = logging.getLogger("batchrouter.simulator.shared")


def key(config: SimulatorConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


def _path(database: str, config_key: str, suffix: str) -> Path:
    return Path(f"{db.canonical_path(database)}.simulator-{config_key}.{suffix}")


def _read(database: str, config_key: str) -> dict[str, Any] | None:
    try:
        info = json.loads(_path(database, config_key, "json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"url", "pid"} <= info.keys() else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stats", timeout=5):
            return True
    except OSError:
        return False


def url_for(database: str, config: SimulatorConfig, *, timeout_s: float = START_TIMEOUT_S) -> str:
    """The base URL (`http://127.0.0.1:PORT/v1`) of the deployment's simulator, starting it if none runs."""
    database, config_key = db.canonical_path(database), key(config)
    db.prepare_parent(database)
    lock = _path(database, config_key, "lock")
    started = False
    try:
        for attempt in retry.until(on=LookupError, timeout_s=timeout_s, first_s=0.02, max_s=0.25, factor=1.5):
            with attempt:
                info = _read(database, config_key)
                if info is not None and _answers(str(info["url"])):
                    return f"{info['url']}/v1"
                if not started and (fd := detached.try_lock(lock)) is not None:
                    try:  # none runs: start it (it inherits the lock, so no other process starts one)
                        detached.start(_command(database, config, fd), lock_fd=fd)
                        started = True
                    finally:
                        os.close(fd)
                elif started and not detached.locked(lock):
                    started = False  # it exited at start (see its log); the next try starts another
                raise LookupError(f"no simulator answers yet ({_path(database, config_key, 'log')})")
    except LookupError:
        pass
    raise ServiceUnavailable(
        f"the built-in provider simulator for {database} did not start within {timeout_s:g} s; "
        f"see {_path(database, config_key, 'log')}, or give the simulator providers a base_url "
        "(a `batchrouter simulate` server)"
    )


def _command(database: str, config: SimulatorConfig, lock_fd: int) -> list[str]:
    idle = os.environ.get("BATCHROUTER_SIMULATOR_IDLE_S", "").strip() or f"{DEFAULT_IDLE_S:g}"
    return [sys.executable, "-m", "batchrouter.simulator.shared", database, config.model_dump_json(),
            "--idle-s", idle, "--lock-fd", str(lock_fd)]  # fmt: skip


def stop(database: str | Path, *, timeout_s: float = 30.0) -> int:
    """Stop every simulator of `database` and wait until each has let go of its lock; how many ran."""
    database = db.canonical_path(database)
    stopped = 0
    for lock in Path(database).parent.glob(f"{Path(database).name}.simulator-*.lock"):
        config_key = lock.name.rsplit("-", 1)[-1].removesuffix(".lock")
        if not detached.locked(lock):
            continue
        stopped += 1
        deadline = time.monotonic() + timeout_s
        while detached.locked(lock):
            info = _read(database, config_key)
            if info is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(info["pid"]), signal.SIGTERM)
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"the simulator of {database} ({lock}) did not stop within {timeout_s:g} s")
            time.sleep(0.05)
    return stopped


# -- the process ---------------------------------------------------------------------------------


def _unseen(app: web.Application) -> int:
    from batchrouter.simulator import anthropic_batches, openai_batches

    return openai_batches.unseen(app) + anthropic_batches.unseen(app)


def stop_reason(*, quiet_s: float, idle_s: float | None, unseen: int, named: bool) -> str | None:
    """Why the simulator should exit now (None: it stays), `quiet_s` seconds after the last request."""
    if not named:
        return "its discovery file no longer names this process (removed, or another took over)"
    if idle_s and quiet_s > idle_s and not unseen:
        return f"idle for {idle_s:g} s with no provider batch left to show"
    if quiet_s > HOLD_S:
        return f"no request for {HOLD_S / 86_400:g} days"
    return None


async def _serve(database: str, config: SimulatorConfig, *, idle_s: float | None) -> None:
    from batchrouter.simulator.server import build_app

    config_key = key(config)
    app = build_app(config)
    last = [time.monotonic()]

    @web.middleware
    async def touch(request: web.Request, handler: Any) -> web.StreamResponse:
        last[0] = time.monotonic()
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(touch)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url, pid = f"http://127.0.0.1:{port}", os.getpid()
    target = _path(database, config_key, "json")
    tmp = target.with_name(f"{target.name}.{pid}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": pid, "database": database, "config": config.model_dump()}))
    tmp.chmod(0o600)
    os.replace(tmp, target)
    log.info("serving at %s for %s (idle exit: %s)", url, database, f"{idle_s:g} s" if idle_s else "never")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reason: str | None = None
    while reason is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, idle_s or 1.0))
        info = _read(database, config_key)
        reason = "asked to stop" if stop.is_set() else stop_reason(
            quiet_s=time.monotonic() - last[0], idle_s=idle_s, unseen=_unseen(app),
            named=info is not None and info.get("pid") == pid)  # fmt: skip
    log.info("stopping: %s", reason)
    info = _read(database, config_key)
    if info is not None and info.get("pid") == pid:
        with contextlib.suppress(OSError):
            target.unlink()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchrouter.simulator.shared")
    parser.add_argument("database")
    parser.add_argument("config_json")
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S, help="exit after this many idle seconds")
    parser.add_argument("--lock-fd", type=int, required=True, help="the lock, taken by the process that started us")
    args = parser.parse_args(argv)
    database, config = db.canonical_path(args.database), SimulatorConfig.model_validate_json(args.config_json)
    os.umask(0o077)
    handler = logging.FileHandler(_path(database, key(config), "log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        asyncio.run(_serve(database, config, idle_s=args.idle_s or None))
    except Exception:
        log.exception("the simulator failed")
        return 1
    finally:
        os.close(args.lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
