"""Object storage through fsspec: a local folder by default, `s3://bucket/prefix` through s3fs.

Layout under the root (documented in the README):

    manifests/<workspace>/<file>             manifests dropped by customers
    quarantine/<workspace>/<file>            unusable manifests, each with <file>.error.txt beside it
    batches/<batch_id>/batch.json            the batch: workspace, source, checksum, times
    batches/<batch_id>/source/<file>         the manifest exactly as submitted
    batches/<batch_id>/manifest.parquet      parsed items, rejections marked
    batches/<batch_id>/quote.parquet         per-item tokens, route, prices
    batches/<batch_id>/quote.json            the quote summary
    batches/<batch_id>/routed_items/route=<route>/items.parquet   accepted items by primary route
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import polars as pl

from batchrouter.core.config import StorageConfig
from batchrouter.core.errors import StorageError

# Threads reading or writing objects at once: enough to cover an object store's latency and every core.
_READERS = 8


def route_slug(route: str) -> str:
    """A route id as a safe folder name (`openrouter:openai/gpt-4o-mini` -> `openrouter_openai_gpt-4o-mini`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", route)


class Storage:
    """Paths relative to the storage root, read and written as whole objects."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        root = config.root.rstrip("/")
        self.protocol = root.split("://", 1)[0] if "://" in root else "file"
        options: dict[str, Any] = {}
        if self.protocol == "s3":
            client: dict[str, Any] = {}
            if config.endpoint_url:
                client["endpoint_url"] = config.endpoint_url
            if config.region:
                client["region_name"] = config.region
            options["client_kwargs"] = client
        try:
            self.fs, path = fsspec.core.url_to_fs(root, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"storage root {root!r} is not usable: {exc}") from exc
        self.base = path.rstrip("/") if self.protocol != "file" else self.fs._strip_protocol(path)
        if self.protocol == "file":
            self.fs.makedirs(self.base, exist_ok=True)

    def path(self, *parts: str) -> str:
        """The filesystem path of a relative key."""
        return posixpath.join(self.base, *parts)

    def url(self, *parts: str) -> str:
        """A full URL (local path for the local root) of a relative key."""
        p = self.path(*parts)
        return p if self.protocol == "file" else f"{self.protocol}://{p}"

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(*parts)))
        except FileNotFoundError as exc:
            raise StorageError(f"{self.url(*parts)} does not exist") from exc

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write atomically: readers see the old object or the new one, never a part."""
        target = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if self.protocol == "file":
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, target)
        else:  # an S3 PUT replaces the object in one step
            self.fs.pipe_file(target, data)
        return self.url(*parts)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_json(self, value: Any, *parts: str) -> str:
        return self.write_bytes(json.dumps(value, indent=2, sort_keys=True, default=str).encode(), *parts)

    def read_parquet(self, *parts: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(*parts)))

    def read_parquets(self, keys: Sequence[tuple[str, ...]]) -> list[pl.DataFrame]:
        """Many objects at once, in order: a checkpoint's hundreds of chunks. Reading and decoding run in
        threads (both release the GIL), so they use every core and overlap the object store's latency."""
        if len(keys) < 2:
            return [self.read_parquet(*key) for key in keys]
        with ThreadPoolExecutor(max_workers=min(len(keys), _READERS)) as pool:
            return list(pool.map(lambda key: self.read_parquet(*key), keys))

    def write_parquet(self, frame: pl.DataFrame, *parts: str) -> str:
        buf = io.BytesIO()
        frame.write_parquet(buf, compression="zstd")
        return self.write_bytes(buf.getvalue(), *parts)

    def write_parquets(self, frames: Sequence[tuple[pl.DataFrame, tuple[str, ...]]]) -> list[str]:
        """Several objects at once (encoding and compressing release the GIL); their URLs, in order."""
        with ThreadPoolExecutor(max_workers=max(1, min(len(frames), _READERS))) as pool:
            return list(pool.map(lambda job: self.write_parquet(job[0], *job[1]), frames))

    def list(self, *parts: str) -> list[str]:
        """Names directly under a relative folder (empty when it does not exist)."""
        folder = self.path(*parts)
        if not self.fs.exists(folder):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False))

    def remove_tree(self, *parts: str) -> None:
        folder = self.path(*parts)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)

    def presign(self, *parts: str, expires_s: int = 3600) -> str | None:
        """An S3 presigned GET URL for a key; None on a local root (the API signs those links itself)."""
        if self.protocol != "s3":
            return None
        return str(self.fs.sign(self.path(*parts), expiration=expires_s))
