"""The signed batch summary, `batches/<id>/summary.json`, and the offline check of a downloaded batch.

The summary records the batch id, workspace, item counts by status, reserve and cost totals, and
the SHA-256 and size of `outputs.parquet`, `receipts.parquet` and `quote.json`. It is signed with
the workspace's Ed25519 key: the signature covers the canonical JSON of every other field
(`json.dumps(..., sort_keys=True, separators=(",", ":"))`), so reformatting the file is harmless
and changing any value is not. Same artifacts, same summary bytes: Ed25519 signatures are
deterministic and the summary holds no clock time.

Keys are created on first use, one per workspace, in the table `workspace_signing_keys` of the
DuckDB file `settings.database` (reached through its control service, `batchrouter.core.control`). The
private key is stored sealed with the secret key (`batchrouter.access.vault`), never in plain text.

`summary.json` carries the public key (`public_key_pem`), so a downloaded batch can be checked for
damage with nothing else. To check that BatchRouter signed it, compare against the workspace's
published key: `batchrouter verify BATCH_DIR --public-key KEY.pem` (`main_verify`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from batchrouter.access import vault
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import Settings
from batchrouter.core.control import served
from batchrouter.core.db import Database
from batchrouter.core.errors import SummaryError as SummaryError
from batchrouter.core.storage import Storage
from batchrouter.execution.checkpoint import ItemStatus

T = TypeVar("T")

FORMAT = "batchrouter.output.summary.v1"
SUMMARY = "summary.json"
ARTIFACTS = ("outputs.parquet", "receipts.parquet", "quote.json")
STATUSES = tuple(ItemStatus)
SCHEMA = """
CREATE TABLE IF NOT EXISTS workspace_signing_keys (
    workspace VARCHAR PRIMARY KEY,
    key_id VARCHAR NOT NULL UNIQUE,
    private_key_pem VARCHAR NOT NULL,
    public_key_pem VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
"""


# -- the key store ---------------------------------------------------------------------------------


def _transaction(database: str, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    return Database(database, schema=SCHEMA).transaction(work)


@dataclass(frozen=True)
class SigningKey:
    workspace: str
    key_id: str
    private_key_pem: str
    public_key_pem: str

    def private_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.private_key_pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SummaryError(f"the signing key {self.key_id} of workspace {self.workspace} is not Ed25519")
        return key


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def signing_key(settings: Settings, workspace: str) -> SigningKey:
    """The workspace's signing key, created on first use."""
    database = settings.database
    row = _stored_key(database, workspace)
    if row is None:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        # Of processes creating the key at once, the first insert wins and everyone gets its key.
        row = _insert_key(database, workspace, _key_id(private.public_key()), vault.seal(database, pem), public)
    key_id, sealed, public_pem = row
    return SigningKey(workspace, key_id, vault.unseal(database, sealed), public_pem)


@served(read_only=True)
def _stored_key(database: str, workspace: str) -> tuple[str, str, str] | None:
    """(key id, sealed private key, public key) of the workspace, or None."""
    row = _transaction(
        database,
        lambda con: con.execute(
            "SELECT key_id, private_key_pem, public_key_pem FROM workspace_signing_keys WHERE workspace = ?",
            [workspace],
        ).fetchone(),
    )
    return (str(row[0]), str(row[1]), str(row[2])) if row is not None else None


@served()
def _insert_key(database: str, workspace: str, key_id: str, sealed: str, public_pem: str) -> tuple[str, str, str]:
    def work(con: duckdb.DuckDBPyConnection) -> tuple[str, str, str]:
        con.execute(
            "INSERT INTO workspace_signing_keys (workspace, key_id, private_key_pem, public_key_pem, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace) DO NOTHING",
            [workspace, key_id, sealed, public_pem, datetime.now(UTC)],
        )
        row = con.execute(
            "SELECT key_id, private_key_pem, public_key_pem FROM workspace_signing_keys WHERE workspace = ?",
            [workspace],
        ).fetchone()
        assert row is not None
        return str(row[0]), str(row[1]), str(row[2])

    return _transaction(database, work)


def public_key(settings: Settings, workspace: str) -> str:
    """The workspace's public key (PEM, SubjectPublicKeyInfo), created on first use."""
    return signing_key(settings, workspace).public_key_pem


# -- writing ---------------------------------------------------------------------------------------


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes the signature covers: every field but `signature`, canonical JSON."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(storage: Storage, *parts: str) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    try:
        with storage.fs.open(storage.path(*parts), "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except FileNotFoundError as exc:
        raise SummaryError(f"{storage.url(*parts)} does not exist; write the batch's results first") from exc
    return {"sha256": sha.hexdigest(), "size": size}


def write_summary(settings: Settings, storage: Storage, info: BatchInfo) -> dict[str, Any]:
    """Write and return the signed `batches/<id>/summary.json` of a batch whose results are written.

    Raises:
        SummaryError: an artifact is missing.
    """
    artifacts = {name: _digest(storage, *info.folder(name)) for name in ARTIFACTS}
    receipts = storage.read_parquet(*info.folder("receipts.parquet"))
    by_status = {str(k): int(v) for k, v in receipts.group_by("status").len().iter_rows()}
    key = signing_key(settings, info.workspace)
    document: dict[str, Any] = {
        "format": FORMAT,
        "batch_id": info.batch_id,
        "workspace": info.workspace,
        "manifest_sha256": info.manifest_sha256,
        "items": receipts.height,
        "counts": {**{s: 0 for s in STATUSES}, **by_status},
        "reserve_usd_micros": int(receipts.select(pl.col("reserve_usd_micros").sum()).item() or 0),
        "cost_usd_micros": int(receipts.select(pl.col("cost_usd_micros").sum()).item() or 0),
        "artifacts": artifacts,
        "key_id": key.key_id,
        "public_key_pem": key.public_key_pem,
    }
    document["signature"] = base64.b64encode(key.private_key().sign(canonical(document))).decode()
    storage.write_json(document, *info.folder(SUMMARY))
    return document


# -- verifying -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a downloaded batch; `artifact` names the file it concerns."""

    artifact: str
    # unsigned | bad_signature | key_mismatch | malformed | missing | sha256_mismatch | size_mismatch | unknown_artifact
    code: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    path: str
    batch_id: str | None
    workspace: str | None
    key_id: str | None
    checked: tuple[str, ...]
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checked": list(self.checked), "ok": self.ok}


def _load_public_key(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SummaryError(f"{where} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SummaryError(f"{where} is not an Ed25519 public key")
    return key


def _file_digest(path: Path) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "size": size}


def verify_batch_dir(path: str | Path, *, public_key_path: str | Path | None = None) -> VerifyReport:
    """Check a downloaded batch folder: the summary's signature, and every artifact's SHA-256 and size.

    The key is the one in `public_key_path` when given (then the summary's own key must match it),
    else the summary's `public_key_pem`.

    Raises:
        SummaryError: the folder, its `summary.json` or the public key file cannot be read at all.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SummaryError(f"{folder} is not a folder; pass the folder holding summary.json and the artifacts")
    try:
        document = json.loads((folder / SUMMARY).read_bytes())
    except FileNotFoundError as exc:
        raise SummaryError(f"{folder / SUMMARY} does not exist; download the batch's summary.json too") from exc
    except (OSError, ValueError) as exc:
        raise SummaryError(f"{folder / SUMMARY} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SummaryError(f"{folder / SUMMARY} is not a JSON object")
    explicit = None
    if public_key_path is not None:
        try:
            pem = Path(public_key_path).read_bytes()
        except OSError as exc:
            raise SummaryError(f"public key {public_key_path} cannot be read: {exc}") from exc
        explicit = _load_public_key(pem, f"public key {public_key_path}")

    problems: list[Problem] = []
    embedded = None
    try:
        embedded = _load_public_key(str(document.get("public_key_pem", "")).encode(), "the summary's public_key_pem")
    except SummaryError as exc:
        if explicit is None:
            problems.append(Problem(SUMMARY, "unsigned", f"{exc}; pass --public-key to check it"))
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if explicit is not None and (embedded is None or embedded.public_bytes(*raw) != explicit.public_bytes(*raw)):
        problems.append(Problem(SUMMARY, "key_mismatch", "the summary names another public key than the one given"))
    key = explicit or embedded
    if key is not None:
        try:
            key.verify(base64.b64decode(str(document.get("signature", "")), validate=True), canonical(document))
        except (InvalidSignature, ValueError):
            problems.append(
                Problem(SUMMARY, "bad_signature", "the signature does not match: summary.json was altered or not "
                        "signed with this key")
            )  # fmt: skip

    artifacts = document.get("artifacts")
    checked: list[str] = []
    if not isinstance(artifacts, dict):
        problems.append(Problem(SUMMARY, "malformed", "summary.json has no artifacts object"))
        artifacts = {}
    for name in ARTIFACTS:
        if name not in artifacts:
            problems.append(Problem(name, "missing", f"summary.json does not list {name}"))
    for name, expected in sorted(artifacts.items()):
        if name not in ARTIFACTS:  # never open a path the summary chose
            problems.append(Problem(SUMMARY, "unknown_artifact", f"summary.json lists an unknown artifact {name!r}"))
            continue
        file = folder / name
        if not file.is_file():
            problems.append(Problem(name, "missing", f"{name} is not in {folder}"))
            continue
        actual = _file_digest(file)
        checked.append(name)
        if not isinstance(expected, dict) or actual["sha256"] != expected.get("sha256"):
            problems.append(Problem(name, "sha256_mismatch", f"{name} does not have the SHA-256 the summary records"))
        elif actual["size"] != expected.get("size"):
            problems.append(Problem(name, "size_mismatch", f"{name} is {actual['size']} bytes, not {expected['size']}"))
    return VerifyReport(
        path=str(folder),
        batch_id=_text(document.get("batch_id")),
        workspace=_text(document.get("workspace")),
        key_id=_text(document.get("key_id")),
        checked=tuple(checked),
        problems=tuple(problems),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def main_verify(argv: Sequence[str] | None = None) -> int:
    """`batchrouter verify BATCH_DIR [--public-key PEM_FILE] [--json]`: 0 intact, 1 altered, 2 unreadable."""
    parser = argparse.ArgumentParser(
        prog="batchrouter verify", description="Check a downloaded batch folder against its signed summary.json."
    )
    parser.add_argument("batch_dir", metavar="BATCH_DIR", help="folder with summary.json and the artifacts")
    parser.add_argument("--public-key", metavar="PEM_FILE", help="the workspace's public key (else the summary's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        report = verify_batch_dir(args.batch_dir, public_key_path=args.public_key)
    except SummaryError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        print(f"ok: batch {report.batch_id} ({report.workspace}), {', '.join(report.checked)} match the signed summary")
    else:
        print(f"ALTERED: batch {report.batch_id} ({report.workspace}) at {report.path}")
        for problem in report.problems:
            print(f"  {problem.artifact}: {problem.code}: {problem.message}")
    return 0 if report.ok else 1
