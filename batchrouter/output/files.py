"""The files service (`engine.files`): files a workspace uploads, and the files BatchRouter writes for it.

OpenAI's Batch API moves data as files: a batch reads an uploaded input file and answers with an
output file and an error file. This is that store, shaped as OpenAI's `file` object so its SDK reads
it unchanged; the drop-in batch face (`batchrouter.dropin`) uses it.

Rules:
- A file belongs to one workspace and is stored under it (`files/<workspace>/<id>/`): another
  workspace's file answers `not_found`, as if it did not exist.
- An uploaded file gets a new id each time (uploading the same bytes twice makes two files, as at
  OpenAI; the batch made from them is still one, since batch ids are digests of the bytes). A file
  BatchRouter writes has an id derived from what it is (`put`), so writing it again changes nothing.
- `expires_after` makes a file unreadable (and unlisted) from `expires_at` on; it is removed when
  next looked at.
"""

from __future__ import annotations

import builtins
import hashlib
import posixpath
import re
import time
import uuid
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchrouter.core.errors import InvalidRequest, NotFound
from batchrouter.core.paging import Page, page

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

FILES = "files"
Purpose = Literal[
    "assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision", "user_data"
]  # fmt: skip
PURPOSES: tuple[str, ...] = Purpose.__args__  # type: ignore[attr-defined]
UPLOADABLE = ("assistants", "batch", "fine-tune", "vision", "user_data")  # the others are written by the server
EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 30 * 24 * 3600  # OpenAI's bounds on `expires_after[seconds]`
_FILE_ID = re.compile(r"file-[0-9a-f]{24}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class FileObject(BaseModel):
    """A file as OpenAI's SDK types it (`openai.types.FileObject`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds")
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


def derived_id(*parts: str) -> str:
    """The id of a file BatchRouter writes, from what it is (e.g. a batch id and "output")."""
    return "file-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def expiry(created_at: int, *, anchor: str | None, seconds: int | None) -> int | None:
    """`expires_at` for `expires_after[anchor]` and `expires_after[seconds]` (both or neither)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor]: the only anchor is 'created_at'", param="expires_after[anchor]")
    if seconds is None or not EXPIRES_MIN_S <= seconds <= EXPIRES_MAX_S:
        raise InvalidRequest(f"expires_after[seconds]: give a whole number from {EXPIRES_MIN_S} (1 hour) to "
                             f"{EXPIRES_MAX_S} (30 days)", param="expires_after[seconds]")  # fmt: skip
    return created_at + seconds


class Files:
    def __init__(self, engine: BatchRouter) -> None:
        self._engine = engine

    def create(
        self,
        data: bytes,
        *,
        workspace: str,
        filename: str,
        purpose: str,
        expires_after_anchor: str | None = None,
        expires_after_seconds: int | None = None,
    ) -> FileObject:
        """Keep an uploaded file; returns its file object (a new id for every upload)."""
        if purpose not in UPLOADABLE:
            raise InvalidRequest(f"purpose: {purpose!r} cannot be uploaded; use one of {', '.join(UPLOADABLE)}",
                                 param="purpose")  # fmt: skip
        if not data:
            raise InvalidRequest("file: the file is empty", param="file")
        created = int(time.time())
        expires_at = expiry(created, anchor=expires_after_anchor, seconds=expires_after_seconds)
        name = _UNSAFE.sub("_", posixpath.basename(filename.replace("\\", "/")))[:128].strip("._") or "upload"
        return self._write(data, workspace=workspace, file_id=f"file-{uuid.uuid4().hex[:24]}", filename=name,
                           purpose=purpose, created_at=created, expires_at=expires_at)  # fmt: skip

    def put(
        self, data: bytes, *, workspace: str, file_id: str, filename: str, purpose: str,
        expires_after_s: int | None = None,
    ) -> FileObject:  # fmt: skip
        """Write a file BatchRouter makes (a batch's output): once; writing it again returns the one there."""
        if self._engine.storage.exists(FILES, workspace, file_id, "file.json"):
            return self.get(file_id, workspace=workspace)
        created = int(time.time())
        expires_at = created + expires_after_s if expires_after_s else None
        return self._write(data, workspace=workspace, file_id=file_id, filename=filename, purpose=purpose,
                           created_at=created, expires_at=expires_at)  # fmt: skip

    def _write(
        self, data: bytes, *, workspace: str, file_id: str, filename: str, purpose: str, created_at: int,
        expires_at: int | None,
    ) -> FileObject:  # fmt: skip
        storage = self._engine.storage
        found = FileObject(id=file_id, bytes=len(data), created_at=created_at, filename=filename, purpose=purpose,
                           expires_at=expires_at)  # fmt: skip
        storage.write_bytes(data, FILES, workspace, file_id, "content")
        storage.write_json(found.model_dump(mode="json"), FILES, workspace, file_id, "file.json")  # last: it is there
        return found

    def get(self, file_id: str, *, workspace: str) -> FileObject:
        storage = self._engine.storage
        if not _FILE_ID.fullmatch(file_id) or not storage.exists(FILES, workspace, file_id, "file.json"):
            raise NotFound(f"no file {file_id!r} in workspace {workspace}")
        found = FileObject.model_validate(storage.read_json(FILES, workspace, file_id, "file.json"))
        if found.expires_at is not None and found.expires_at <= time.time():
            storage.remove_tree(FILES, workspace, file_id)
            raise NotFound(f"file {file_id!r} expired at {found.expires_at} (its expires_after)")
        return found

    def content(self, file_id: str, *, workspace: str) -> bytes:
        self.get(file_id, workspace=workspace)
        return self._engine.storage.read_bytes(FILES, workspace, file_id, "content")

    def list(
        self,
        workspace: str,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        order: Literal["asc", "desc"] = "desc",
    ) -> Page[FileObject]:
        """The workspace's files (newest first by default), `limit` after the file `after`."""
        found: builtins.list[FileObject] = []
        for file_id in self._engine.storage.list(FILES, workspace):
            try:
                one = self.get(file_id, workspace=workspace)
            except NotFound:
                continue
            if purpose is None or one.purpose == purpose:
                found.append(one)
        found.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        return page(found, key=lambda f: f.id, after=after, limit=limit)

    def delete(self, file_id: str, *, workspace: str) -> FileDeleted:
        self.get(file_id, workspace=workspace)
        self._engine.storage.remove_tree(FILES, workspace, file_id)
        return FileDeleted(id=file_id, deleted=True)
