"""The control service: one process owns the DuckDB file and serves money and account operations.

DuckDB supports one process reading and writing a file, with many threads inside it. So one
long-lived *owner* process opens the database and every other process (runs, Dagster sensors, the
CLI, the API) asks it to run *operations*: a method of `Ledger` or `Accounts`, or a database
function of `delivery`, `summary`, `vault`, marked `@served`. Call sites do not change:
`Ledger(settings.database).reserve(...)` runs in the owner and returns the same `Entry`, and an
error comes back as the same exception class with the same code and message.

    client                                  owner (python -m batchrouter.core.control serve DATABASE)
    Ledger(db).reserve(ws, batch, 5)  --->  POST /v1/op {"op": "batchrouter.money.ledger:Ledger.reserve",
                                             "args": [...], "request_id": ...}, Bearer token
                                            one transaction: the operation, and (for writes) the
                                            request id with its answer in `control_requests`

Guarantees:
- One served operation is one transaction (nested operations join it): all of it or nothing.
- Writes are serialised in the owner (the wallet row stays the conflict point for processes
  that open the file alone); reads run side by side on their own cursors.
- A write answered once is answered the same again: the client re-sends the same request id after
  a lost answer, a restart or a failover, and the owner replays the recorded result.

Discovery: `<database>.control.json` (0600) holds the owner's URL (127.0.0.1, a random port), its
token and pid; `<database>.control.lock` (fcntl) makes exactly one owner win; the owner logs to
`<database>.control.log`. A client that finds no owner starts one, detached (new session, stdio to
/dev/null), and retries while it starts; the owner exits after `BATCHROUTER_CONTROL_IDLE_S`
seconds without requests (default 300; 0 never) and on SIGTERM, finishing the requests it holds.
`batchrouter ledger serve` runs one in the foreground (production). Environment:

    BATCHROUTER_CONTROL          service (default): call the owner, starting it when none runs
                                 direct: open the file in this process; only when it is alone
    BATCHROUTER_CONTROL_IDLE_S   idle seconds before an auto-started owner exits
    BATCHROUTER_CONTROL_TIMEOUT_S  how long a client keeps trying to reach an owner (default 120)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hmac
import http.client
import importlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import duckdb

from batchrouter.core import db, detached, private_files, retry
from batchrouter.core.errors import BatchRouterError
from batchrouter.core.errors import ControlError as ControlError
from batchrouter.core.errors import ServiceUnavailable as ServiceUnavailable

F = TypeVar("F", bound=Callable[..., Any])

SCHEMA = """
CREATE TABLE IF NOT EXISTS control_requests (
    request_id VARCHAR PRIMARY KEY,
    op VARCHAR NOT NULL,
    result_json VARCHAR NOT NULL,
    answered_at TIMESTAMPTZ NOT NULL
);
"""
# The modules whose tables the reporting views read: a snapshot always holds them.
SCHEMA_MODULES = ("batchrouter.money.ledger", "batchrouter.access.accounts")
MAX_BODY_BYTES = 64 * 1024 * 1024
REQUEST_MEMORY = timedelta(days=7)  # recorded answers older than this are forgotten at start-up
DEFAULT_IDLE_S = 300.0
DEFAULT_TIMEOUT_S = 120.0

log = logging.getLogger("batchrouter.core.control")


class _NoAnswer(Exception):
    """No owner answered this try; the client starts one and tries again until its deadline."""


# -- paths and modes -----------------------------------------------------------------------------


def discovery_path(database: str | Path) -> Path:
    return Path(f"{db.canonical_path(database)}.control.json")


def lock_path(database: str | Path) -> Path:
    return Path(f"{db.canonical_path(database)}.control.lock")


def log_path(database: str | Path) -> Path:
    return Path(f"{db.canonical_path(database)}.control.log")


def mode() -> Literal["service", "direct"]:
    value = os.environ.get("BATCHROUTER_CONTROL", "service").strip().lower() or "service"
    if value not in ("service", "direct"):
        raise ControlError(f"BATCHROUTER_CONTROL={value!r}: use 'service' (the default) or 'direct'")
    return cast(Literal["service", "direct"], value)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError as exc:
        raise ControlError(f"{name}={raw!r} is not a number of seconds") from exc
    if not 0 <= value < 10**7:
        raise ControlError(f"{name}={raw!r} must be between 0 and 10,000,000 seconds")
    return value


# -- the wire format: JSON with tags for the types results carry ---------------------------------


def encode(value: Any) -> Any:
    """A JSON-ready form of an argument or result; `decode` rebuilds it with its types."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return {"$t": "float", "v": repr(value)}  # NaN and infinity survive, exactly
    if isinstance(value, datetime):
        return {"$t": "datetime", "v": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$t": "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, tuple):
        return {"$t": "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "$t" not in value:
            return {k: encode(v) for k, v in value.items()}
        return {"$t": "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"$t": "dataclass", "cls": f"{cls.__module__}:{cls.__qualname__}", "v": fields}
    raise TypeError(f"cannot send a {type(value).__name__} to or from the control service")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get("$t")
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    v = value["v"]
    if tag == "float":
        return float(v)
    if tag == "datetime":
        return datetime.fromisoformat(v)
    if tag == "timedelta":
        return timedelta(days=v[0], seconds=v[1], microseconds=v[2])
    if tag == "tuple":
        return tuple(decode(x) for x in v)
    if tag == "dict":
        return {decode(k): decode(x) for k, x in v}
    if tag == "dataclass":
        cls = _resolve(value["cls"])
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ControlError(f"{value['cls']} is not a result type")
        return cls(**{k: decode(x) for k, x in v.items()})
    raise ControlError(f"unknown value tag {tag!r} from the control service")


def _resolve(name: str) -> Any:
    """`module:Qual.name` inside the batchrouter package (nothing else is ever imported by name)."""
    module_name, _, qualname = name.partition(":")
    if not (module_name == "batchrouter" or module_name.startswith("batchrouter.")) or not qualname:
        raise ControlError(f"{name!r} is not a BatchRouter name")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        if part.startswith("__"):
            raise ControlError(f"{name!r} is not a BatchRouter name")
        target = getattr(target, part)
    return target


_BUILTIN_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "KeyError": KeyError}


def encode_error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    if isinstance(exc, BatchRouterError):
        attrs: dict[str, Any] = {}
        for key, val in vars(exc).items():
            try:
                attrs[key] = encode(val)
            except TypeError:
                attrs[key] = str(val)
        return {"cls": f"{cls.__module__}:{cls.__qualname__}", "args": encode(list(exc.args)), "attrs": attrs}
    if cls.__name__ in _BUILTIN_ERRORS and cls is _BUILTIN_ERRORS[cls.__name__]:
        return {"builtin": cls.__name__, "args": [str(a) for a in exc.args]}
    return {"message": f"{cls.__name__}: {exc}"}


def decode_error(error: dict[str, Any], op: str) -> BaseException:
    if "cls" in error:
        try:
            cls = _resolve(error["cls"])
        except (ControlError, ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, BatchRouterError):
            exc = cls.__new__(cls)
            exc.args = tuple(decode(error["args"]))
            exc.__dict__.update({k: decode(v) for k, v in error["attrs"].items()})
            return exc
    if "builtin" in error:
        return _BUILTIN_ERRORS[error["builtin"]](*error["args"])
    return ControlError(
        f"the control service failed running {op}: {error.get('message', error)}; see its log beside the database"
    )


# -- served operations ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Op:
    name: str
    read_only: bool
    method: bool


def served(*, read_only: bool = False) -> Callable[[F], F]:
    """Run the decorated method (of a class holding `.path`) or function (first argument: the database
    path) in the process that owns the database; from any other process, through the control service.

    `read_only` operations are not recorded for replay; every other operation is one transaction whose
    answer is recorded under the caller's request id.
    """

    def decorate(fn: F) -> F:
        qual = fn.__qualname__
        op = _Op(f"{fn.__module__}:{qual}", read_only, "." in qual)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            database = db.canonical_path(args[0].path if op.method else args[0])
            if db.held(database):
                owner = _OWNERS.get(database)
                if owner is None or db._CURRENT.get() is not None:
                    return fn(*args, **kwargs)  # already inside an operation: join it
                return owner.run(op, fn, args, kwargs, request_id=None)
            if mode() == "direct":
                return fn(*args, **kwargs)
            return client(database).call(op, list(args[1:]), kwargs)

        wrapper.__served__ = op  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


# -- the owner -----------------------------------------------------------------------------------

_OWNERS: dict[str, Owner] = {}


def _execute(sql: str, con: duckdb.DuckDBPyConnection) -> None:
    con.execute(sql)


class Owner:
    """The process-side of the service: the open file, the write lock, the replay table."""

    def __init__(self, database: str, *, lock_timeout_s: float = 60.0) -> None:
        self.database = db.canonical_path(database)
        self.con = db.open_file(self.database, lock_timeout_s=lock_timeout_s)
        self.write_lock = threading.Lock()
        self.lock_timeout_s = lock_timeout_s
        self._schemas: set[str] = set()
        db.retrying(self._cursor, functools.partial(_execute, SCHEMA), timeout_s=lock_timeout_s)
        self.forget()
        db.hold(self.database, self.con)
        _OWNERS[self.database] = self

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cursor = self.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def run(self, op: _Op, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
            *, request_id: str | None) -> Any:  # fmt: skip
        """Run one operation as one transaction; a write with a known request id answers its recorded result."""
        if op.read_only:
            return db.retrying(self._cursor, lambda con: self._attempt(con, op, fn, args, kwargs, None),
                               timeout_s=self.lock_timeout_s)  # fmt: skip
        with self.write_lock:
            return db.retrying(self._cursor, lambda con: self._attempt(con, op, fn, args, kwargs, request_id),
                               timeout_s=self.lock_timeout_s)  # fmt: skip

    def _attempt(self, con: duckdb.DuckDBPyConnection, op: _Op, fn: Callable[..., Any], args: Sequence[Any],
                 kwargs: dict[str, Any], request_id: str | None) -> Any:  # fmt: skip
        if request_id is not None:
            row = con.execute("SELECT result_json FROM control_requests WHERE request_id = ?", [request_id]).fetchone()
            if row is not None:
                return decode(json.loads(row[0]))
        with db.joined(self.database, con):
            result = fn(*args, **kwargs)
        if request_id is not None:
            con.execute(
                "INSERT INTO control_requests VALUES (?, ?, ?, ?)",
                [request_id, op.name, json.dumps(encode(result)), datetime.now(UTC)],
            )
        return result

    def execute(self, name: str, args: list[Any], kwargs: dict[str, Any], request_id: str | None) -> Any:
        """An operation by name, as a client sent it."""
        target = _resolve(name)
        op = getattr(target, "__served__", None)
        if not isinstance(op, _Op) or op.name != name:
            raise ControlError(f"{name!r} is not an operation the control service runs")
        self._ensure_schema(name.partition(":")[0])
        fn = target.__wrapped__
        if op.method:
            cls = _resolve(name.rsplit(".", 1)[0])
            call_args = [cls(self.database), *args]
        else:
            call_args = [self.database, *args]
        return self.run(op, fn, call_args, kwargs, request_id=request_id)

    def forget(self) -> None:
        """Drop recorded answers older than `REQUEST_MEMORY` (no client retries for that long) and old snapshots."""
        cutoff = datetime.now(UTC) - REQUEST_MEMORY
        forget = "DELETE FROM control_requests WHERE answered_at < ?"
        with self.write_lock:
            db.retrying(self._cursor, lambda con: con.execute(forget, [cutoff]), timeout_s=self.lock_timeout_s)
        for leftover in Path(f"{self.database}.snapshots").glob("*.duckdb*"):
            with contextlib.suppress(OSError):
                if time.time() - leftover.stat().st_mtime > 3600:  # a reader that died before removing it
                    leftover.unlink()

    def _ensure_schema(self, module_name: str) -> None:
        """Create the tables of an operation's module the first time one of its operations runs."""
        if module_name in self._schemas:
            return
        schema = getattr(importlib.import_module(module_name), "SCHEMA", "")
        with self.write_lock:
            if schema:
                db.retrying(self._cursor, functools.partial(_execute, schema), timeout_s=self.lock_timeout_s)
            self._schemas.add(module_name)

    def snapshot(self) -> str:
        """A consistent copy of the whole database in a new file beside it (0600), for read-only reporting."""
        for module_name in SCHEMA_MODULES:
            self._ensure_schema(module_name)
        folder = Path(f"{self.database}.snapshots")
        folder.mkdir(mode=0o700, exist_ok=True)
        target = folder / f"{uuid.uuid4().hex}.duckdb"
        alias = f"snap_{uuid.uuid4().hex[:12]}"
        with self._cursor() as con:
            name = con.execute("SELECT current_database()").fetchone()
            assert name is not None
            # Identifiers cannot be parameters: both are ours (a random alias, DuckDB's own name, quoted).
            con.execute(f"ATTACH ? AS {alias}", [str(target)])
            try:
                con.execute(f'COPY FROM DATABASE "{name[0]}" TO {alias}')
            finally:
                con.execute(f"DETACH {alias}")
        return str(target)

    def close(self) -> None:
        _OWNERS.pop(self.database, None)
        db.release(self.database)
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error:
            log.exception("checkpoint at close failed")
        self.con.close()


# -- the HTTP face of the owner ------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for every request being answered
    request_queue_size = 256

    def __init__(self, owner: Owner, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner
        self.token = token
        self.closing = False
        self.stop = threading.Event()
        self.busy = 0
        self.last_request = time.monotonic()
        self.counter = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one line per request would drown the log; errors are logged below

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        given = self.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode())

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._authorised():
            return self._answer(401, {"error": {"message": "wrong or missing token"}})
        if self.path == "/v1/health":
            return self._answer(200, {"pid": os.getpid(), "database": self.server.owner.database})
        self._answer(404, {"error": {"message": f"no such path {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        server = self.server
        if not self._authorised():
            return self._answer(401, {"error": {"message": "wrong or missing token"}})
        if server.closing:
            return self._answer(503, {"error": {"message": "the control service is stopping; try again"}})
        length = int(self.headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY_BYTES:
            return self._answer(413, {"error": {"message": f"a request is at most {MAX_BODY_BYTES} bytes"}})
        with server.counter:
            server.busy += 1
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if body.get("database") != server.owner.database:
                return self._answer(409, {"error": {"message": f"this service owns {server.owner.database}"}})
            if self.path == "/v1/shutdown":
                server.stop.set()
                return self._answer(200, {"stopping": True})
            if self.path == "/v1/snapshot":
                return self._answer(200, {"ok": True, "result": server.owner.snapshot()})
            if self.path != "/v1/op":
                return self._answer(404, {"error": {"message": f"no such path {self.path}"}})
            op = str(body.get("op", ""))
            try:
                result = server.owner.execute(op, decode(body.get("args", [])), decode(body.get("kwargs", {})),
                                              body.get("request_id"))  # fmt: skip
                self._answer(200, {"ok": True, "result": encode(result)})
            except BatchRouterError as exc:
                self._answer(200, {"ok": False, "error": encode_error(exc)})
            except Exception as exc:
                log.exception("operation %s failed", op)
                self._answer(200, {"ok": False, "error": encode_error(exc)})
        finally:
            with server.counter:
                server.busy -= 1
                server.last_request = time.monotonic()


def serve(
    database: str | Path, *, idle_s: float | None = None, foreground: bool = False, lock_fd: int | None = None
) -> int:
    """Own `database` and serve it until idle for `idle_s` seconds (None or 0: never) or SIGTERM.

    Returns 0 after a clean stop, 3 when another process already owns the database.
    """
    database = db.canonical_path(database)
    db.prepare_parent(database)
    os.umask(0o077)  # the database, its WAL, the discovery file, the log, snapshots: owner only
    handler = logging.FileHandler(log_path(database))
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # `lock_fd`: the owner lock, already taken by the client that started us (inherited, still held).
    lock = lock_fd if lock_fd is not None else _acquire_lock(database, wait_s=5.0)
    if lock is None:
        msg = f"another process already owns {database} (see {discovery_path(database)})"
        log.info(msg)
        if foreground:
            print(msg, file=sys.stderr)
        return 3
    try:
        try:
            owner = Owner(database)
        except Exception:
            log.exception("cannot open %s", database)
            raise
        server = _Server(owner, secrets.token_urlsafe(32))
        previous = {s: signal.signal(s, lambda *_: server.stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        _write_discovery(database, {"url": url, "token": server.token, "pid": os.getpid(), "database": database})
        log.info("serving %s at %s (idle exit: %s)", database, url, f"{idle_s:g} s" if idle_s else "never")
        if foreground:
            print(f"control service for {database} at {url} (pid {os.getpid()}); Ctrl-C stops it", file=sys.stderr)
        next_forget = time.monotonic() + 3600
        while not server.stop.wait(0.2):
            if time.monotonic() > next_forget:
                owner.forget()
                next_forget = time.monotonic() + 3600
            with server.counter:
                idle = server.busy == 0 and time.monotonic() - server.last_request > (idle_s or float("inf"))
            if idle:
                log.info("idle for %g s: stopping", idle_s)
                break
        # New clients stop finding us first; requests in flight are answered before the file closes.
        _remove_discovery(database, server.token)
        server.closing = True
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
        owner.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
        log.info("stopped")
        return 0
    finally:
        os.close(lock)
        log.removeHandler(handler)
        handler.close()


def _acquire_lock(database: str, *, wait_s: float) -> int | None:
    try:
        for attempt in retry.until(on=BlockingIOError, timeout_s=wait_s, first_s=0.05, max_s=0.05, factor=1.0):
            with attempt:
                fd = detached.try_lock(lock_path(database))
                if fd is None:
                    raise BlockingIOError(f"{lock_path(database)} is locked")
                return fd
    except BlockingIOError:
        return None
    raise AssertionError("retry.until runs at least one attempt")  # pragma: no cover


def owner_running(database: str | Path) -> bool:
    """Whether some process holds the owner lock of `database` (a probe: it never blocks)."""
    return detached.locked(lock_path(database))


def _write_discovery(database: str, info: dict[str, Any]) -> None:
    private_files.replace(discovery_path(database), json.dumps(info).encode())


def _read_discovery(database: str) -> dict[str, Any] | None:
    """The owner's address, if the file beside `database` names an owner *of this database*.

    A copied folder carries the discovery file of the original: it names another database and is ignored.
    """
    try:
        info = json.loads(discovery_path(database).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not {"url", "token", "database"} <= info.keys():
        return None
    return info if info["database"] == db.canonical_path(database) else None


def _remove_discovery(database: str, token: str) -> None:
    info = _read_discovery(database)
    if info is not None and info.get("token") == token:
        with contextlib.suppress(OSError):
            discovery_path(database).unlink()


# -- the client ----------------------------------------------------------------------------------

_CLIENTS: dict[str, Client] = {}
_CLIENTS_LOCK = threading.Lock()


def client(database: str) -> Client:
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(database)
        if found is None:
            found = _CLIENTS[database] = Client(database)
        return found


class Client:
    """Calls operations in the owner of one database file, starting the owner when none runs."""

    def __init__(self, database: str) -> None:
        self.database = db.canonical_path(database)
        self._next_start = 0.0
        self._start_lock = threading.Lock()

    def call(self, op: _Op, args: list[Any], kwargs: dict[str, Any]) -> Any:
        payload = {"op": op.name, "args": encode(args), "kwargs": encode(kwargs), "request_id": uuid.uuid4().hex,
                   "database": self.database}  # fmt: skip
        body = self._post("/v1/op", payload, what=op.name)
        if body.get("ok"):
            return decode(body["result"])
        raise decode_error(body["error"], op.name)

    def snapshot(self) -> str:
        return str(self._post("/v1/snapshot", {"database": self.database}, what="a snapshot")["result"])

    def _post(self, path: str, payload: dict[str, Any], *, what: str) -> dict[str, Any]:
        data = json.dumps(payload).encode()
        timeout_s = _env_seconds("BATCHROUTER_CONTROL_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        try:
            for attempt in retry.until(on=_NoAnswer, timeout_s=timeout_s, first_s=0.01, max_s=0.25, factor=1.5):
                with attempt:
                    return self._post_once(path, data, what=what)
        except _NoAnswer as exc:
            raise ServiceUnavailable(
                f"no control service for {self.database} answered within {timeout_s:g} s ({exc}); "
                f"see {log_path(self.database)}, or run `batchrouter ledger serve` for this database"
            ) from None
        raise AssertionError("retry.until runs at least one attempt")  # pragma: no cover

    def _post_once(self, path: str, data: bytes, *, what: str) -> dict[str, Any]:
        """One try at the owner; `_NoAnswer` (after starting an owner if none runs) when it may answer later."""
        problem = "no control service answered"
        info = _read_discovery(self.database)
        if info is not None:
            try:
                status, body = _http(info, path, data)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{info['url']}: {type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return body
                problem = f"{info['url']} answered {status}: {body.get('error', {}).get('message')}"
                if status not in (401, 409, 503):  # 401, 409: a stale discovery file; 503: stopping
                    raise ControlError(f"the control service refused {what}: {problem}")
        self._start()
        raise _NoAnswer(problem)

    def _start(self) -> None:
        """Start a detached owner unless one runs or is starting (at most one try every few seconds)."""
        with self._start_lock:
            now = time.monotonic()
            if now < self._next_start:
                return
            db.prepare_parent(self.database)
            fd = detached.try_lock(lock_path(self.database))
            if fd is None:
                return  # an owner runs, or is starting: its lock is taken
            try:
                self._next_start = now + 5.0
                start_detached(self.database, lock_fd=fd)
            finally:
                os.close(fd)  # the owner holds the same lock through its inherited descriptor


# The owner's entry point. It loads `batchrouter` as a bare package, without running its
# `__init__` (which imports the whole engine, seconds of start-up on a busy machine): the owner
# needs `control`, `db` and the modules of the operations it is asked to run, imported on demand.
_ENTRY = (
    "import importlib.util, sys, types; spec = importlib.util.find_spec('batchrouter'); "
    "package = types.ModuleType('batchrouter'); package.__path__ = list(spec.submodule_search_locations); "
    "sys.modules['batchrouter'] = package; "
    "from batchrouter.core.control import main; sys.exit(main(sys.argv[1:]))"
)


def start_detached(database: str, *, lock_fd: int) -> None:
    """Start `python -m batchrouter.core.control serve DATABASE` detached (`detached.start`), holding the lock."""
    idle = _env_seconds("BATCHROUTER_CONTROL_IDLE_S", DEFAULT_IDLE_S)
    detached.start([sys.executable, "-c", _ENTRY, "serve", database, "--idle-s", f"{idle:g}",
                    "--lock-fd", str(lock_fd)], lock_fd=lock_fd)  # fmt: skip


def _http(info: dict[str, Any], path: str, data: bytes) -> tuple[int, dict[str, Any]]:
    host, _, port = str(info["url"]).removeprefix("http://").partition(":")
    con = http.client.HTTPConnection(host, int(port), timeout=DEFAULT_TIMEOUT_S)
    try:
        con.request("POST", path, body=data, headers={"authorization": f"Bearer {info['token']}",
                                                       "content-type": "application/json"})  # fmt: skip
        response = con.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        return response.status, body if isinstance(body, dict) else {}
    finally:
        con.close()


# -- helpers for operators, reporting and tests --------------------------------------------------


def stop(database: str | Path, *, timeout_s: float = 60.0) -> bool:
    """Ask the owner of `database` to stop and wait until it has released the file; False if none ran."""
    database = db.canonical_path(database)
    info = _read_discovery(database)
    if info is not None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            _http(info, "/v1/shutdown", json.dumps({"database": database}).encode())
    was_running = info is not None or owner_running(database)
    deadline = time.monotonic() + timeout_s
    while owner_running(database):
        if time.monotonic() > deadline:
            raise ControlError(f"the control service of {database} did not stop within {timeout_s:g} s")
        info = _read_discovery(database)
        if info is not None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                _http(info, "/v1/shutdown", json.dumps({"database": database}).encode())
        time.sleep(0.05)
    return was_running


@contextlib.contextmanager
def readable_copy(database: str | Path) -> Iterator[str]:
    """A path DuckDB can ATTACH read-only with the database's current content, while the block runs.

    With a service: a consistent snapshot the owner writes beside the database, removed afterwards.
    Without a database file yet, or in direct mode: the file itself.
    """
    database = db.canonical_path(database)
    if db.held(database) and database in _OWNERS:
        path = _OWNERS[database].snapshot()
    elif mode() == "direct" or not Path(database).exists():
        yield database
        return
    else:
        path = client(database).snapshot()
    try:
        yield path
    finally:
        for leftover in (Path(path), Path(f"{path}.wal")):
            with contextlib.suppress(OSError):
                leftover.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchrouter.core.control")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="own the database file and serve it")
    s.add_argument("database")
    s.add_argument("--idle-s", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    s.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return serve(args.database, idle_s=args.idle_s or None, lock_fd=args.lock_fd)


if __name__ == "__main__":
    # Run the imported module's main, not this `__main__` copy: the operations look up *its* owners.
    from batchrouter.core.control import main as _main

    sys.exit(_main())
