"""Quarantine: an unusable manifest kept exactly as received, with a report of what is wrong beside it."""

from __future__ import annotations

import hashlib
import posixpath
from datetime import UTC, datetime

from batchrouter.core.errors import ManifestError
from batchrouter.core.storage import Storage

QUARANTINE = "quarantine"


def quarantine(storage: Storage, *, workspace: str, source_name: str, data: bytes, error: ManifestError) -> str:
    """Keep an unusable manifest with a human-readable report beside it; returns the report's URL."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # The digest keeps two different files quarantined in the same second apart.
    name = f"{stamp}-{hashlib.sha256(data).hexdigest()[:8]}-{posixpath.basename(source_name)}"
    storage.write_bytes(data, QUARANTINE, workspace, name)
    report = (
        f"Manifest: {source_name}\nWorkspace: {workspace}\nQuarantined: {stamp}\n\n"
        f"Problem: {error.problem}\nWhat to do: {error.fix}\n\n"
        "The file beside this report is the manifest exactly as received. Fix it and submit it again.\n"
    )
    return storage.write_bytes(report.encode(), QUARANTINE, workspace, f"{name}.error.txt")
