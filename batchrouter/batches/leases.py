"""Who is running a batch right now: one lease per batch in the database.

A Dagster run, `batchrouter run` and an API thread may all be asked to advance the same batch at
once. Each claims the batch's lease first, through the process that owns the database, so one runs
it and the others are told who does. A lease lasts `ttl_s` and is renewed while its run makes
progress; a run that dies stops renewing, and its lease lapses, so the batch can be run again (and
the sweeper may release its reservation); a run killed on this host is known dead at once, and its
lease is taken over by the next run. The sweeper never touches a batch whose lease is live.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from batchrouter.core.control import served
from batchrouter.core.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_leases (
    batch_id VARCHAR PRIMARY KEY, owner VARCHAR NOT NULL, claimed_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"""


def _now() -> datetime:
    return datetime.now(UTC)


class Leases:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = Database(self.path, schema=SCHEMA)

    @served()
    def claim(self, batch_id: str, owner: str, *, ttl_s: float, replacing: str | None = None) -> str | None:
        """Take the batch's lease for `owner`; None when taken, else who holds it and until when.

        `replacing`: take it over from that holder, known to be dead, whatever its expiry.
        """

        def work(con: duckdb.DuckDBPyConnection) -> str | None:
            now = _now()
            row = con.execute("SELECT owner, expires_at FROM batch_leases WHERE batch_id = ?", [batch_id]).fetchone()
            if row is not None and row[0] not in (owner, replacing) and row[1] > now:
                return str(row[0])
            con.execute(
                "INSERT INTO batch_leases VALUES (?, ?, ?, ?) ON CONFLICT (batch_id) DO UPDATE SET "
                "owner = excluded.owner, claimed_at = excluded.claimed_at, expires_at = excluded.expires_at",
                [batch_id, owner, now, now + timedelta(seconds=ttl_s)],
            )
            return None

        return self.db.transaction(work)

    @served(read_only=True)
    def expiry(self, batch_id: str) -> str | None:
        """When the batch's lease runs out (ISO 8601), or None when there is none."""
        with self.db.connect() as con:
            row = con.execute("SELECT expires_at FROM batch_leases WHERE batch_id = ?", [batch_id]).fetchone()
        return row[0].isoformat(timespec="seconds") if row else None

    @served()
    def renew(self, batch_id: str, owner: str, *, ttl_s: float) -> bool:
        """Extend `owner`'s lease; False when it no longer holds it."""

        def work(con: duckdb.DuckDBPyConnection) -> bool:
            row = con.execute(
                "UPDATE batch_leases SET expires_at = ? WHERE batch_id = ? AND owner = ? RETURNING batch_id",
                [_now() + timedelta(seconds=ttl_s), batch_id, owner],
            ).fetchone()
            return row is not None

        return self.db.transaction(work)

    @served()
    def release(self, batch_id: str, owner: str) -> None:
        self.db.transaction(
            lambda con: con.execute("DELETE FROM batch_leases WHERE batch_id = ? AND owner = ?", [batch_id, owner])
        )

    @served(read_only=True)
    def holder(self, batch_id: str) -> str | None:
        """Who runs the batch now (a live lease), or None."""
        with self.db.connect() as con:
            row = con.execute(
                "SELECT owner FROM batch_leases WHERE batch_id = ? AND expires_at > ?", [batch_id, _now()]
            ).fetchone()
        return str(row[0]) if row else None

    @served(read_only=True)
    def left(self) -> list[tuple[str, str, bool]]:
        """Every lease held now: (batch id, owner, whether it is unexpired). A run that ended released its
        own, so one whose owner is dead (`is_dead`) or whose time ran out was left by a run that died."""
        with self.db.connect() as con:
            rows = con.execute("SELECT batch_id, owner, expires_at > ? FROM batch_leases ORDER BY batch_id",
                               [_now()]).fetchall()  # fmt: skip
        return [(str(batch_id), str(owner), bool(live)) for batch_id, owner, live in rows]


_OWNER = re.compile(r" on (?P<host>\S+) pid (?P<pid>\d+) ")


def owner_name(actor: str) -> str:
    """A lease owner's name: who, on which host, in which process (and a nonce for each run)."""
    return f"{actor} on {socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"


def is_dead(owner: str) -> bool:
    """True when `owner` was a process of this host that no longer exists (killed, crashed)."""
    found = _OWNER.search(owner)
    if found is None or found["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
