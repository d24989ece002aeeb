"""A batch's identity and where its files live: `batches/<batch_id>/` under the storage root.

Every part reads and writes a batch's files through `BatchInfo.folder`; the id says which workspace
the batch belongs to.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from batchrouter.core.errors import BatchError
from batchrouter.core.storage import Storage

BATCHES = "batches"


@dataclass(frozen=True)
class BatchInfo:
    """What `batch.json` records about a batch."""

    batch_id: str
    workspace: str
    source_name: str
    manifest_sha256: str
    submitted_at: str
    source_key: str | None = None  # where it was dropped in the bucket, if it came that way
    run_tag: str | None = None  # set when the same bytes were run again on purpose
    # Seconds from `submitted_at` by which every item is to be answered (None: as soon as possible).
    deadline_s: float | None = None

    def folder(self, *parts: str) -> tuple[str, ...]:
        return (BATCHES, self.batch_id, *parts)


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string to the second (how batch files record times)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


BATCH_DIGEST_CHARS = 24
_RUN_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def batch_id_for(workspace: str, sha256: str, *, run_tag: str | None = None) -> str:
    """`<workspace>-<24 hex>`: the same bytes in the same workspace (and run tag) are the same batch.

    The file's name plays no part, so a renamed copy is the same batch and is not charged twice.
    The workspace is spelled out in full and the digest has a fixed length, so the id can be split
    back into both: two different workspaces can never share a batch id.
    """
    material = f"{workspace}\n{sha256}\n{run_tag or ''}".encode()
    return f"{workspace}-{hashlib.sha256(material).hexdigest()[:BATCH_DIGEST_CHARS]}"


def check_run_tag(run_tag: str | None) -> str | None:
    """A run tag names a deliberate re-run of the same bytes; None or empty means no tag."""
    if not run_tag:
        return None
    if not _RUN_TAG.fullmatch(run_tag) or "--" in run_tag:
        raise BatchError(
            f"run tag {run_tag!r} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', "
            "without '--' (e.g. 2026-12-01-retry)"
        )
    return run_tag


def load_batch(storage: Storage, batch_id: str) -> BatchInfo:
    if not storage.exists(BATCHES, batch_id, "batch.json"):
        raise BatchError(f"batch {batch_id!r} does not exist under {storage.url(BATCHES)}")
    return BatchInfo(**storage.read_json(BATCHES, batch_id, "batch.json"))
