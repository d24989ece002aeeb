"""The control-plane DuckDB file, as seen from the one process allowed to open it.

DuckDB supports one process reading and writing a file, with many threads inside it. Other
processes reach the data through the control service (`batchrouter.core.control`), which is the process
that opens the file here. `Database` has three ways to reach the file, chosen by who is asking:

- inside an operation the control service is running: the operation's own transaction (a nested
  `transaction()` or `connect()` joins it, so one served operation is one transaction);
- in the owner process outside an operation: a cursor on the connection the owner holds open;
- in a process that is explicitly alone (`BATCHROUTER_CONTROL=direct`, tests of the ledger logic):
  the file is opened for each operation and closed after, retrying while it is locked.

Files created here are readable by their owner only (0600; a parent folder we create is 0700).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

import duckdb

from batchrouter.core import retry
from batchrouter.core.errors import DatabaseBusy as DatabaseBusy

T = TypeVar("T")

# The transaction of the served operation running in this thread: (database path, cursor).
_CURRENT: ContextVar[tuple[str, duckdb.DuckDBPyConnection] | None] = ContextVar("batchrouter_db_current", default=None)
# Connections held open by the owner process, by absolute path.
_HELD: dict[str, duckdb.DuckDBPyConnection] = {}
_HELD_LOCK = threading.Lock()


def canonical_path(path: str | Path) -> str:
    """The absolute form of a database path: one owner, one discovery file, whatever the spelling."""
    return os.path.abspath(os.fspath(path))


def prepare_parent(path: str | Path) -> None:
    """Create the folder of a database file, readable by its owner only when we create it."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def restrict(path: str | Path) -> None:
    """Make a file we own (the database, its WAL) readable and writable by its owner only."""
    for candidate in (Path(path), Path(f"{path}.wal")):
        try:
            if candidate.exists() and candidate.stat().st_uid == os.getuid():
                candidate.chmod(0o600)
        except OSError:
            pass  # another process removed it (a checkpointed WAL) meanwhile


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    # Another process holds the file; or, within this process, another thread is closing its
    # connection while this one opens the file ("Unique file handle conflict"): both pass, so retry.
    return "Could not set lock" in text or "Conflicting lock" in text or "Unique file handle conflict" in text


def _is_conflict(exc: Exception) -> bool:
    return isinstance(exc, duckdb.TransactionException) or "Conflict" in str(exc)


def _is_busy(exc: Exception) -> bool:
    # IOException: another process holds the lock. ResourceInUse: a thread here is opening it now.
    return isinstance(exc, duckdb.ResourceInUseException) or (
        isinstance(exc, duckdb.IOException) and _is_lock_error(exc)
    )


def open_file(path: str, *, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    """Open the file read-write, retrying with jittered back-off while another process holds it."""
    prepare_parent(path)
    try:
        for attempt in retry.until(on=_is_busy, timeout_s=lock_timeout_s, first_s=0.005, max_s=0.2, jitter_s=0.005):
            with attempt:
                con = duckdb.connect(path)
    except (duckdb.IOException, duckdb.ResourceInUseException) as exc:
        raise DatabaseBusy(
            f"{path} stayed locked by another process for {lock_timeout_s:g} s; only the control "
            "service may open it (see `batchrouter ledger serve`)"
        ) from exc
    restrict(path)
    return con


def hold(path: str, con: duckdb.DuckDBPyConnection) -> None:
    """Register the owner's long-lived connection to `path` (the control service calls this)."""
    with _HELD_LOCK:
        _HELD[canonical_path(path)] = con


def release(path: str) -> duckdb.DuckDBPyConnection | None:
    with _HELD_LOCK:
        return _HELD.pop(canonical_path(path), None)


def held(path: str) -> bool:
    return canonical_path(path) in _HELD


def _cursor(path: str) -> duckdb.DuckDBPyConnection | None:
    with _HELD_LOCK:
        con = _HELD.get(path)
        return con.cursor() if con is not None else None


@contextmanager
def joined(path: str, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block as part of the transaction open on `con` (a served operation)."""
    token = _CURRENT.set((canonical_path(path), con))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def retrying(
    connect: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    work: Callable[[duckdb.DuckDBPyConnection], T],
    *,
    timeout_s: float,
) -> T:
    """BEGIN, `work`, COMMIT on a connection from `connect`, retried on write conflicts until `timeout_s`.

    Two threads inserting the same unique key at once (the same idempotency key, a workspace's
    first row) also retry, a few times: the loser's retry then finds the winner's row. Any other
    error, ours included, rolls back and propagates.
    """
    duplicates = 0

    def worth_retrying(exc: Exception) -> bool:
        nonlocal duplicates
        if isinstance(exc, duckdb.ConstraintException):
            duplicates += 1
            return duplicates <= 10
        return isinstance(exc, duckdb.Error) and _is_conflict(exc)

    for attempt in retry.until(on=worth_retrying, timeout_s=timeout_s, first_s=0.002, max_s=0.1, jitter_s=0.002):
        with attempt, connect() as con:
            try:
                con.execute("BEGIN TRANSACTION")
                result = work(con)
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
            return result
    raise AssertionError("retry.until runs at least one attempt")  # pragma: no cover


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


class Database:
    """Transactions on one DuckDB file; see the module docstring for which connection they use."""

    def __init__(self, path: str | Path, *, schema: str = "", lock_timeout_s: float = 60.0) -> None:
        self.path = canonical_path(path)
        self.schema = schema
        self.lock_timeout_s = lock_timeout_s
        self._schema_ready = not schema

    def _current(self) -> duckdb.DuckDBPyConnection | None:
        current = _CURRENT.get()
        return current[1] if current is not None and current[0] == self.path else None

    def _ensure_schema(self) -> None:
        # The owner creates every schema when it opens the file; a process alone does it on first use.
        if self._schema_ready or held(self.path):
            self._schema_ready = True
            return
        self._schema_ready = True
        self.transaction(lambda con: con.execute(self.schema))

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        current = self._current()
        if current is not None:
            yield current
            return
        self._ensure_schema()
        cursor = _cursor(self.path)
        con = cursor if cursor is not None else open_file(self.path, lock_timeout_s=self.lock_timeout_s)
        try:
            yield con
        finally:
            con.close()

    def transaction(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `work` in one transaction, retried on write conflicts.

        Inside a served operation, `work` joins the operation's transaction (the service retries the
        whole operation). Two threads inserting the same unique key at once (the same idempotency
        key, a workspace's first row) retry a few times: the loser's retry then finds the winner's
        row. Any other error, ours included, rolls back and propagates.
        """
        current = self._current()
        if current is not None:
            return work(current)
        self._ensure_schema()
        return retrying(self.connect, work, timeout_s=self.lock_timeout_s)
