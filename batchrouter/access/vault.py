"""Secrets at rest: webhook endpoint secrets and workspace signing keys are stored encrypted.

Values are sealed with Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) in the process
that uses them, before they are sent to the control service; the database and the service only ever
see `fernet:<token>`. Rows written before encryption existed (plain text) are still read, and
`batchrouter secrets rotate` seals them.

The keys, strongest first:

- `BATCHROUTER_SECRET_KEY`: one Fernet key (`Fernet.generate_key()`), or several separated by
  commas: the first seals, every one unseals (rotation).
- otherwise the key file `<database>.key` beside the database (0600), generated at first use: the
  demo and the tests need no setup, and the key never sits in the database it protects. Keep the
  file (or the variable) with the database's backups, apart from them.

Rotation: `batchrouter secrets rotate` re-seals every stored secret with the first key. With the
variable: set `BATCHROUTER_SECRET_KEY=<new>,<old>` everywhere, run the command, then drop `<old>`.
With the key file: the command writes a new key in front of the old one, re-seals, then keeps
only the new key.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from batchrouter.core import private_files
from batchrouter.core.control import served
from batchrouter.core.db import Database, canonical_path, prepare_parent
from batchrouter.core.errors import VaultError as VaultError

PREFIX = "fernet:"
ENV = "BATCHROUTER_SECRET_KEY"
# Table, key column, sealed column: every secret the database stores. Identifiers are ours, never input.
SEALED = (
    ("webhook_endpoints", "endpoint_id", "secret"),
    ("workspace_signing_keys", "workspace", "private_key_pem"),
)


def key_file(database: str) -> Path:
    return Path(f"{canonical_path(database)}.key")


def _file_keys(database: str) -> list[str]:
    path = key_file(database)
    if not path.exists():
        prepare_parent(path)
        # Of processes and threads racing here, one key wins and every one reads it.
        private_files.create(path, (Fernet.generate_key().decode() + "\n").encode())
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _keys(database: str) -> list[str]:
    raw = os.environ.get(ENV, "").strip()
    keys = [k.strip() for k in raw.split(",") if k.strip()] if raw else _file_keys(database)
    if not keys:
        raise VaultError(f"no secret key: set {ENV} or restore {key_file(database)}")
    return keys


def _fernet(database: str) -> MultiFernet:
    where = ENV if os.environ.get(ENV, "").strip() else str(key_file(database))
    try:
        return MultiFernet([Fernet(k.encode()) for k in _keys(database)])
    except ValueError as exc:
        raise VaultError(
            f"{where} holds something that is not a Fernet key (32 url-safe base64 bytes); "
            "make one with `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
        ) from exc


def seal(database: str, plaintext: str) -> str:
    """The stored form of a secret."""
    return PREFIX + _fernet(database).encrypt(plaintext.encode()).decode()


def unseal(database: str, stored: str) -> str:
    """The secret behind a stored value (a plain-text value from before encryption passes unchanged)."""
    if not stored.startswith(PREFIX):
        return stored
    try:
        return _fernet(database).decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken as exc:
        raise VaultError(
            f"a stored secret of {database} cannot be decrypted with the configured keys; set {ENV} to the key "
            "it was sealed with (several keys may be given, separated by commas)"
        ) from exc


def _table(table: str) -> tuple[str, str, str]:
    for entry in SEALED:
        if entry[0] == table:
            return entry
    raise VaultError(f"{table!r} holds no sealed secrets")


@served(read_only=True)
def _stored(database: str, table: str) -> list[tuple[str, str]]:
    name, key, column = _table(table)
    with Database(database).connect() as con:
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()[0][0]:
            return []
        return [(str(k), str(v)) for k, v in con.execute(f"SELECT {key}, {column} FROM {name}").fetchall()]


@served()
def _replace(database: str, table: str, updates: list[tuple[str, str, str]]) -> int:
    """Write new sealed values, each only where the old one is still stored; how many changed."""
    name, key, column = _table(table)

    def work(con: duckdb.DuckDBPyConnection) -> int:
        changed = 0
        for row_key, old, new in updates:
            hit = con.execute(
                f"UPDATE {name} SET {column} = ? WHERE {key} = ? AND {column} = ? RETURNING 1", [new, row_key, old]
            ).fetchall()
            changed += len(hit)
        return changed

    return Database(database).transaction(work)


def reseal_all(database: str) -> dict[str, int]:
    """Seal every stored secret with the first key; how many values each table had re-sealed."""
    fernet = _fernet(database)
    counts: dict[str, int] = {}
    for table, _, _ in SEALED:
        updates = []
        for row_key, stored in _stored(database, table):
            token = stored.removeprefix(PREFIX).encode()
            try:
                fresh = fernet.rotate(token) if stored.startswith(PREFIX) else fernet.encrypt(stored.encode())
            except InvalidToken as exc:
                raise VaultError(
                    f"{table} {row_key}: sealed with a key that is not configured; add it to {ENV} after the new one"
                ) from exc
            updates.append((row_key, stored, PREFIX + fresh.decode()))
        counts[table] = _replace(database, table, updates) if updates else 0
    return counts


def rotate(database: str) -> dict[str, int]:
    """Re-seal every secret: with the keys of `BATCHROUTER_SECRET_KEY` as given, or with a new file key."""
    if os.environ.get(ENV, "").strip():
        return reseal_all(database)
    old = _file_keys(database)
    fresh = Fernet.generate_key().decode()
    _write_keys(database, [fresh, *old])
    counts = reseal_all(database)
    _write_keys(database, [fresh])
    return counts


def _write_keys(database: str, keys: list[str]) -> None:
    private_files.replace(key_file(database), ("\n".join(keys) + "\n").encode())
