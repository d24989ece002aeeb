"""Small owner-only files (keys, secrets, discovery files) written whole or not at all, by any process or thread.

Each write goes to a temporary name of its own beside the target (process, thread and a random part:
two threads of one process never share one) and is then moved into place: `replace` for a file any
writer may overwrite, `create` for one that only the first writer makes (a hard link makes the name
only if it is absent; of writers racing, every one ends up reading the winner's).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def _staged(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return tmp


def replace(path: str | Path, data: bytes) -> None:
    """Write `path` (0600) as a whole: readers see the old content or the new, never a part."""
    path = Path(path)
    tmp = _staged(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def create(path: str | Path, data: bytes) -> bool:
    """Make `path` (0600) with `data` unless it exists; whether this call made it."""
    path = Path(path)
    tmp = _staged(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True
