"""Manifests dropped in the bucket: `manifests/<workspace>/<file>` under the storage root.

`scan` lists files newer than a cursor (last-modified time, plus the keys already seen at that
exact time, so files sharing a timestamp are neither missed nor taken twice); the batches
service turns one into a batch. The same listing works on a local root and on S3 (s3fs reports each object's
LastModified, as S3's ListObjectsV2 does).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.errors import ManifestError
from batchrouter.core.storage import Storage
from batchrouter.intake.quarantine import quarantine

MANIFESTS = "manifests"
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Dropped:
    key: str  # relative to the storage root: manifests/<workspace>/<name>
    workspace: str
    name: str
    modified: float

    @property
    def is_manifest(self) -> bool:
        return self.name.lower().endswith(MANIFEST_SUFFIXES)


@dataclass
class Cursor:
    modified: float = 0.0
    keys: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(float(data["modified"]), list(data["keys"]))

    def dump(self) -> str:
        return json.dumps({"modified": self.modified, "keys": sorted(self.keys)})

    def advance(self, files: list[Dropped]) -> Cursor:
        if not files:
            return self
        latest = max(f.modified for f in files)
        if latest > self.modified:
            return Cursor(latest, [f.key for f in files if f.modified == latest])
        return Cursor(self.modified, sorted({*self.keys, *(f.key for f in files if f.modified == latest)}))


def _modified(info: dict[str, Any]) -> float:
    """When the file arrived. On a local root that is the later of its modification and change times:
    `mv`, `cp -p` and `rsync -a` keep an old modification time, but arriving changes the inode."""
    if "LastModified" in info:
        value = info["LastModified"]
        return value.timestamp() if isinstance(value, datetime) else float(value)
    return max(float(info.get("mtime", 0.0)), float(info.get("created", 0.0)))


def scan(storage: Storage, cursor: Cursor) -> list[Dropped]:
    """Files under manifests/<workspace>/ modified after the cursor, oldest first."""
    root = storage.path(MANIFESTS)
    if not storage.fs.exists(root):
        return []
    found = []
    for path, info in storage.fs.find(root, detail=True).items():
        rel = posixpath.relpath(path, storage.base)
        parts = rel.split("/")
        if len(parts) != 3 or info.get("type") == "directory" or parts[2].startswith("."):
            continue  # only manifests/<workspace>/<file>; no nesting, no hidden or temporary files
        dropped = Dropped(rel, parts[1], parts[2], _modified(info))
        if dropped.modified > cursor.modified or (dropped.modified == cursor.modified and rel not in cursor.keys):
            found.append(dropped)
    return sorted(found, key=lambda d: (d.modified, d.key))


RERUN_PREFIX = "rerun-"  # `rerun-<tag>--<file>`: the same bytes run again on purpose, as a new batch


def dropped_name(info: BatchInfo) -> str:
    """The file name under which a batch's manifest is dropped for the sensor (its run tag kept)."""
    return f"{RERUN_PREFIX}{info.run_tag}--{info.source_name}" if info.run_tag else info.source_name


def source_of(dropped: Dropped) -> tuple[str, str | None]:
    """The manifest's file name and run tag a dropped file's name carries (`rerun-<tag>--<file>`)."""
    name = dropped.name
    if name.startswith(RERUN_PREFIX) and "--" in name[len(RERUN_PREFIX) :]:
        run_tag, name = name[len(RERUN_PREFIX) :].split("--", 1)
        return name, run_tag
    return name, None


def refuse(storage: Storage, dropped: Dropped, *, problem: str, fix: str) -> str:
    """Quarantine a dropped file without running it (e.g. its workspace is suspended); returns the report URL."""
    data = storage.read_bytes(dropped.key)
    report = quarantine(storage, workspace=dropped.workspace, source_name=dropped.name, data=data,
                        error=ManifestError(dropped.key, problem, fix))  # fmt: skip
    storage.fs.rm(storage.path(dropped.key))
    return report
