"""Signed, expiring links to a batch's artifacts.

On an S3 root a link is an S3 presigned GET URL: the bucket checks it and the API is not involved.
On a local root a link points at the API,

    {api_base}/v1/artifacts/{workspace}/{batch_id}/{artifact}?expires={unix}&sig={hex}

where `sig` is HMAC-SHA256 with the server's link secret over the workspace, batch id, artifact and
expiry. The API hands the four path and query values to `resolve_link`, which answers the storage
key to serve or raises a `LinkError` whose `code` (and `http_status`) say why not.

The link secret is read from the environment variable named by `delivery.link_secret_env`
(default `BATCHROUTER_LINK_SECRET`). Set it in production, to the same value on every API process.
When it is unset (local development), a random 32-byte secret is created once at
`<storage root>/.secrets/link-secret` and used from then on; deleting that file invalidates every
link issued with it.

Only `outputs.parquet`, `receipts.parquet`, `summary.json` and `quote.json` can be linked.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import posixpath
import re
import secrets
import time
from urllib.parse import quote

from batchrouter.core import private_files
from batchrouter.core.batch_info import BATCHES
from batchrouter.core.config import Settings
from batchrouter.core.errors import LinkError as LinkError
from batchrouter.core.errors import LinkExpired as LinkExpired
from batchrouter.core.errors import LinkNotFound as LinkNotFound
from batchrouter.core.errors import LinkPathRefused as LinkPathRefused
from batchrouter.core.errors import LinkSignatureInvalid as LinkSignatureInvalid
from batchrouter.core.errors import LinkUnknownArtifact as LinkUnknownArtifact
from batchrouter.core.errors import LinkWorkspaceMismatch as LinkWorkspaceMismatch
from batchrouter.core.storage import Storage

log = logging.getLogger(__name__)

LINKABLE = frozenset({"outputs.parquet", "receipts.parquet", "summary.json", "quote.json"})
SECRET_KEY = (".secrets", "link-secret")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}")
_SIG = re.compile(r"[0-9a-f]{64}")
_EXPIRES = re.compile(r"[0-9]{1,12}")


def _check_component(kind: str, value: str) -> None:
    """Refuse anything that is not one plain path component, before it is used anywhere."""
    if not isinstance(value, str) or not value:
        raise LinkPathRefused(f"the link's {kind} is empty")
    if any(bad in value for bad in ("/", "\\", "\x00", "%", "..")) or value.startswith("."):
        raise LinkPathRefused(f"the link's {kind} {value!r} is not a single plain name")
    if kind == "artifact":
        if value not in LINKABLE:
            raise LinkUnknownArtifact(
                f"{value!r} cannot be linked; linkable artifacts are {', '.join(sorted(LINKABLE))}"
            )
    elif not _NAME.fullmatch(value):
        raise LinkPathRefused(f"the link's {kind} {value!r} is not a valid name")


def link_secret(settings: Settings, storage: Storage) -> bytes:
    """The server's link secret: the configured environment variable, else the development secret file."""
    value = os.environ.get(settings.delivery.link_secret_env, "")
    if value:
        return value.encode()
    if storage.protocol == "file":
        return _local_secret(storage)
    if storage.exists(*SECRET_KEY):
        return storage.read_bytes(*SECRET_KEY)
    log.warning("%s is unset: storing a development link secret in the bucket", settings.delivery.link_secret_env)
    storage.write_bytes(secrets.token_bytes(32), *SECRET_KEY)
    return storage.read_bytes(*SECRET_KEY)


def _local_secret(storage: Storage) -> bytes:
    path = storage.path(*SECRET_KEY)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    os.makedirs(posixpath.dirname(path), mode=0o700, exist_ok=True)
    if private_files.create(path, secrets.token_bytes(32)):  # of writers racing, all read the winner's
        log.warning("no link secret in the environment: created the development secret %s", path)
    with open(path, "rb") as f:
        return f.read()


def signature(secret: bytes, workspace: str, batch_id: str, artifact: str, expires: int) -> str:
    """HMAC-SHA256 (hex) of the link's fields; none may contain a newline, so the encoding is unambiguous."""
    message = "\n".join(("batchrouter-link-v1", workspace, batch_id, artifact, str(expires)))
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def api_base(settings: Settings) -> str:
    base = settings.delivery.api_base or f"http://{settings.api.host}:{settings.api.port}"
    return base.rstrip("/")


def _batch_workspace(storage: Storage, batch_id: str) -> str:
    if not storage.exists(BATCHES, batch_id, "batch.json"):
        raise LinkNotFound(f"batch {batch_id!r} does not exist")
    return str(storage.read_json(BATCHES, batch_id, "batch.json")["workspace"])


def sign_link(
    settings: Settings,
    storage: Storage,
    workspace: str,
    batch_id: str,
    artifact: str,
    *,
    expires_s: int | None = None,
    now: float | None = None,
) -> str:
    """A URL that fetches the artifact until `expires_s` seconds from now (default `delivery.link_expires_s`).

    Raises:
        LinkError: an invalid name, an artifact that cannot be linked, a batch of another workspace.
    """
    for kind, value in (("workspace", workspace), ("batch id", batch_id), ("artifact", artifact)):
        _check_component(kind, value)
    lifetime = settings.delivery.link_expires_s if expires_s is None else expires_s
    if not 0 < lifetime <= 604_800:
        raise LinkError(f"a link must expire within 1 s to 7 days, not {lifetime} s")
    if _batch_workspace(storage, batch_id) != workspace:
        raise LinkWorkspaceMismatch(f"batch {batch_id} does not belong to workspace {workspace}")
    if storage.protocol == "s3":
        url = storage.presign(BATCHES, batch_id, artifact, expires_s=lifetime)
        if url is None:  # pragma: no cover - presign answers for every S3 root
            raise LinkError(f"could not presign {storage.url(BATCHES, batch_id, artifact)}")
        return url
    expires = int(time.time() if now is None else now) + lifetime
    sig = signature(link_secret(settings, storage), workspace, batch_id, artifact, expires)
    path = "/".join(quote(part, safe="") for part in (workspace, batch_id, artifact))
    return f"{api_base(settings)}/v1/artifacts/{path}?expires={expires}&sig={sig}"


def resolve_link(
    settings: Settings,
    storage: Storage,
    workspace: str,
    batch_id: str,
    artifact: str,
    expires: int | str,
    sig: str,
    *,
    now: float | None = None,
) -> str:
    """Check a link's fields as the API received them; returns the artifact's storage key.

    Checks, in order: every name is one plain component and the artifact is linkable; the signature
    (compared in constant time); the expiry; the batch's `batch.json` names the same workspace; the
    artifact exists.

    Raises:
        LinkPathRefused, LinkUnknownArtifact, LinkSignatureInvalid, LinkExpired, LinkWorkspaceMismatch,
        LinkNotFound: each with a stable `code`.
    """
    for kind, value in (("workspace", workspace), ("batch id", batch_id), ("artifact", artifact)):
        _check_component(kind, value)
    expires_text = str(expires)
    if not _EXPIRES.fullmatch(expires_text) or not isinstance(sig, str) or not _SIG.fullmatch(sig):
        raise LinkSignatureInvalid("the link's expiry or signature is malformed")
    expected = signature(link_secret(settings, storage), workspace, batch_id, artifact, int(expires_text))
    if not hmac.compare_digest(expected, sig):
        raise LinkSignatureInvalid("the link's signature does not match; it was altered or not issued here")
    if int(expires_text) <= (time.time() if now is None else now):
        raise LinkExpired("the link has expired; ask for a new one")
    if _batch_workspace(storage, batch_id) != workspace:
        raise LinkWorkspaceMismatch(f"batch {batch_id} does not belong to workspace {workspace}")
    if not storage.exists(BATCHES, batch_id, artifact):
        raise LinkNotFound(f"{artifact} of batch {batch_id} does not exist (yet)")
    return posixpath.join(BATCHES, batch_id, artifact)
