"""The built-in simulator of a deployment: one long-lived process that every run, sensor and API shares.

A provider's batches outlive the run that made them: a run submits them and ends, and a later run, the
provider-batch sensor or `batchrouter serve` collects them. So a simulator provider without a
`base_url` is not served by a simulator of the run's own (its batches would die with the run) but by
this one, found beside the database:

    <database>.simulator-<key>.json   its URL and pid (0600); <key> names the simulator settings
    <database>.simulator-<key>.lock   held (fcntl) by the process while it runs: exactly one starts
    <database>.simulator-<key>.log    what it did

The first run that needs it starts it detached (`core.detached`). It stays while
any provider batch's results have not been read (running, or ended and not collected), and exits once
it has been `BATCHROUTER_SIMULATOR_IDLE_S` seconds (default 300; 0 never) without a request with none
such, or a week without any request, or when its discovery file is gone or names another process.
A batch whose results were read is forgotten a day later (`KEEP_S`), so a busy process stays small.
Each provider batch's record names the simulator that holds it (`Sent.simulator`, the key), so
changed `[simulator]` settings start another simulator for new batches while the old one still
answers for its own. Its state lives in memory, like a provider's: a machine restart loses the
provider batches it held, and the runs that wait on them find them gone and send their lines online.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
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
from typing import TYPE_CHECKING, Any

from batchrouter.core import db, detached, private_files, retry
from batchrouter.core.config import SimulatorConfig
from batchrouter.core.errors import ConfigError, SimulatorUnavailable

if TYPE_CHECKING:
    from aiohttp import web

DEFAULT_IDLE_S = 300.0
MAX_STARTS = 3  # a simulator that exits at start is tried again this many times per caller, then reported
KEEP_S = 86_400.0  # a batch whose results were read is forgotten this long after (memory stays bounded)
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


def _stats_pid(url: str) -> int | None:
    """The pid the simulator at `url` says it runs as (None: nothing, or something else, answers there)."""
    try:
        with urllib.request.urlopen(f"{url}/_stats", timeout=5) as response:
            pid = json.loads(response.read()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def running_url(database: str, config_key: str) -> str | None:
    """The base URL of the simulator `config_key` of `database` if it runs (None: it is gone, and with it
    the provider batches it held). Never starts one."""
    database = db.canonical_path(database)
    info = _read(database, config_key)
    if info is None or not detached.locked(_path(database, config_key, "lock")):
        return None  # a discovery file left by a simulator that died: its port may be anyone's now
    return f"{info['url']}/v1" if _stats_pid(str(info["url"])) == info["pid"] else None


def url_for(database: str, config: SimulatorConfig, *, timeout_s: float = START_TIMEOUT_S) -> str:
    """The base URL (`http://127.0.0.1:PORT/v1`) of the deployment's simulator, starting it if none runs."""
    database, config_key = db.canonical_path(database), key(config)
    db.prepare_parent(database)
    idle = idle_s()  # a bad value is the caller's error, not a child that exits unseen
    lock = _path(database, config_key, "lock")
    starts = 0
    started = False
    began = time.monotonic()
    try:
        for attempt in retry.until(on=LookupError, timeout_s=timeout_s, first_s=0.02, max_s=0.25, factor=1.5):
            with attempt:
                found = running_url(database, config_key)
                if found is not None:
                    return found
                if not started and starts < MAX_STARTS and (fd := detached.try_lock(lock)) is not None:
                    try:  # none runs: start it (it inherits the lock, so no other process starts one)
                        detached.start(_command(database, config, fd, idle), lock_fd=fd)
                        started, starts = True, starts + 1
                    finally:
                        os.close(fd)
                elif started and not detached.locked(lock):
                    started = False  # it exited at start (see its log); the next try starts another
                    if starts >= MAX_STARTS:
                        break  # each one exited: waiting longer starts nothing
                raise LookupError(f"no simulator answers yet ({_path(database, config_key, 'log')})")
    except LookupError:
        pass
    raise SimulatorUnavailable(
        f"the built-in provider simulator for {database} did not start ({starts} tries in "
        f"{time.monotonic() - began:.0f} s); see {_path(database, config_key, 'log')}, or give the simulator "
        "providers a base_url (a `batchrouter simulate` server)"
    )


def idle_s() -> float:
    """`BATCHROUTER_SIMULATOR_IDLE_S`: idle seconds before the simulator exits (0: never)."""
    raw = os.environ.get("BATCHROUTER_SIMULATOR_IDLE_S", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IDLE_S
    except ValueError:
        value = -1.0
    if not 0 <= value < 10**7:
        raise ConfigError(f"BATCHROUTER_SIMULATOR_IDLE_S={raw!r}: give a number of seconds from 0 (never) "
                          "to 10,000,000")  # fmt: skip
    return value


def _command(database: str, config: SimulatorConfig, lock_fd: int, idle: float) -> list[str]:
    return [sys.executable, "-m", "batchrouter.simulator.shared", database, config.model_dump_json(),
            "--idle-s", f"{idle:g}", "--lock-fd", str(lock_fd)]  # fmt: skip


def stop(database: str | Path, *, timeout_s: float = 30.0) -> int:
    """Stop every simulator of `database` and wait until each has let go of its lock; how many ran."""
    database = db.canonical_path(database)
    stopped = 0
    for lock in Path(database).parent.glob(f"{glob.escape(Path(database).name)}.simulator-*.lock"):
        config_key = lock.name.rsplit("-", 1)[-1].removesuffix(".lock")
        if not detached.locked(lock):
            continue
        stopped += 1
        deadline = time.monotonic() + timeout_s
        while detached.locked(lock):
            info = _read(database, config_key)
            if info is not None and _is_simulator(int(info["pid"])):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(info["pid"]), signal.SIGTERM)
            if time.monotonic() > deadline:
                raise SimulatorUnavailable(f"the simulator of {database} ({lock}) did not stop within {timeout_s:g} s")
            time.sleep(0.05)
    return stopped


def _is_simulator(pid: int) -> bool:
    """Whether `pid` is a shared simulator (not some other process that reuses the pid of one that died)."""
    try:
        return b"batchrouter.simulator.shared" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists() and pid > 0  # no /proc (macOS): trust the discovery file


# -- the process ---------------------------------------------------------------------------------


def _unseen(app: web.Application) -> int:
    from batchrouter.simulator import anthropic_batches, openai_batches

    return openai_batches.unseen(app) + anthropic_batches.unseen(app)


def _prune(app: web.Application, *, keep_s: float) -> int:
    from batchrouter.simulator import anthropic_batches, openai_batches

    read_before = time.monotonic() - keep_s
    return openai_batches.prune(app, read_before=read_before) + anthropic_batches.prune(app, read_before=read_before)


def _names_another(target: Path, pid: int) -> bool:
    """Whether the discovery file is gone or names another process (a read that fails otherwise says nothing)."""
    try:
        info = json.loads(target.read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return not isinstance(info, dict) or info.get("pid") != pid


def stop_reason(*, quiet_s: float, idle_s: float | None, unseen: int, named: bool) -> str | None:
    """Why the simulator should exit now (None: it stays), `quiet_s` seconds after the last request."""
    if not named:
        return "its discovery file no longer names this process (removed, or another took over)"
    if idle_s and quiet_s > idle_s and not unseen:
        return f"idle for {idle_s:g} s with every provider batch's results read"
    if quiet_s > HOLD_S:
        return f"no request for {HOLD_S / 86_400:g} days"
    return None


async def _serve(database: str, config: SimulatorConfig, *, idle_s: float | None) -> None:
    from aiohttp import web  # here: a run that only asks for the URL does not load the server

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

    async def holding(request: web.Request) -> web.Response:
        """This process, and the provider batches that keep it running (what `stop_reason` weighs)."""
        return web.json_response({"pid": os.getpid(), "unseen": _unseen(app), "idle_s": idle_s})

    app.router.add_get("/_shared", holding)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before anyone can find us to ask us to stop
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url, pid = f"http://127.0.0.1:{port}", os.getpid()
    target = _path(database, config_key, "json")
    private_files.replace(target, json.dumps({"url": url, "pid": pid, "database": database,
                                              "config": config.model_dump()}).encode())  # fmt: skip
    log.info("serving at %s for %s (idle exit: %s)", url, database, f"{idle_s:g} s" if idle_s else "never")
    reason: str | None = None
    unnamed = 0  # looks in a row that found the discovery file gone or naming another process
    while reason is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, idle_s or 1.0))
        unnamed = unnamed + 1 if _names_another(target, pid) else 0
        _prune(app, keep_s=KEEP_S)
        reason = "asked to stop" if stop.is_set() else stop_reason(
            quiet_s=time.monotonic() - last[0], idle_s=idle_s, unseen=_unseen(app), named=unnamed < 3)  # fmt: skip
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
