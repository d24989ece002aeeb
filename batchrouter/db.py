"""The control-plane DuckDB file: short connections, lock retry, transactions with conflict retry.

DuckDB lets one process open a database file at a time; every operation here opens the file, does
its work and closes it, retrying with jittered back-off while another process holds it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from batchrouter.errors import BatchRouterError

T = TypeVar("T")


class DatabaseBusy(BatchRouterError):
    """Another process kept the database file locked for longer than the timeout."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    # Another process holds the file; or, within this process, another thread is closing its
    # connection while this one opens the file ("Unique file handle conflict"): both pass, so retry.
    return "Could not set lock" in text or "Conflicting lock" in text or "Unique file handle conflict" in text


def _is_conflict(exc: Exception) -> bool:
    return isinstance(exc, duckdb.TransactionException) or "Conflict" in str(exc)


class Database:
    def __init__(self, path: str | Path, *, schema: str = "", lock_timeout_s: float = 60.0) -> None:
        self.path = str(path)
        self.lock_timeout_s = lock_timeout_s
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if schema:
            # Several threads may create the tables at once: a conflict is retried like any other.
            self.transaction(lambda con: con.execute(schema))

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        while True:
            try:
                con = duckdb.connect(self.path)
                break
            except (duckdb.IOException, duckdb.ResourceInUseException) as exc:
                # IOException: another process holds the lock. ResourceInUse: a thread here is opening it now.
                busy = isinstance(exc, duckdb.ResourceInUseException) or _is_lock_error(exc)
                if not busy or time.monotonic() > deadline:
                    raise DatabaseBusy(
                        f"{self.path} stayed locked by another process for {self.lock_timeout_s:g} s"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.2)
        try:
            yield con
        finally:
            con.close()

    def transaction(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `work` in one transaction, retried on write conflicts.

        Two threads inserting the same unique key at once (the same idempotency key, a workspace's
        first row) also retry, a few times: the loser's retry then finds the winner's row. Any other
        error, ours included, rolls back and propagates.
        """
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.002
        duplicates = 0
        while True:
            with self.connect() as con:
                try:
                    con.execute("BEGIN TRANSACTION")
                    result = work(con)
                    con.execute("COMMIT")
                    return result
                except duckdb.Error as exc:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass
                    if isinstance(exc, duckdb.ConstraintException) and duplicates < 10:
                        duplicates += 1
                    elif not _is_conflict(exc) or time.monotonic() > deadline:
                        raise
                except BaseException:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.1)
