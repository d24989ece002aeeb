"""The reports service: read-only SQL over the reporting views, the daily usage report, and signed
links to a batch's artifacts (made and resolved).

Rules: a key's SQL sees only its own workspace's rows; the usage report (every workspace) is the
operator's; a key gets links only to its own workspace's batches (another's answers `not_found`, as
if it did not exist); a link is honoured only when its signature and expiry check out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from batchrouter.access.accounts import Principal
from batchrouter.access.actors import SYSTEM, Actor
from batchrouter.core.batch_info import BATCHES
from batchrouter.core.errors import NotFound
from batchrouter.output import links, reporting

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

# The artifacts `links` offers, in the order the API lists them.
ARTIFACTS = ("outputs.parquet", "receipts.parquet", "summary.json", "quote.json")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class QueryResult(BaseModel):
    """A query's column names and rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        """The rows as {column: value} (what `batchrouter sql --json` prints)."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class UsageReport(BaseModel):
    """One day's usage_daily rows written as Parquet at `url`, with their totals."""

    day: str
    url: str
    rows: int
    items: int
    cost_usd_micros: int


class BatchLinks(BaseModel):
    """`GET /v1/batches/{batch_id}/links`: a signed URL per artifact that exists."""

    batch_id: str
    expires_in_s: int
    links: dict[str, str]


@dataclass(frozen=True)
class Artifact:
    """A resolved link: the artifact's storage key, its media type and its bytes."""

    key: str
    media_type: str
    data: bytes


class Reports:
    def __init__(self, engine: BatchRouter) -> None:
        self.engine = engine

    def sql(self, query: str, *, workspace: str | None = None, actor: Actor = SYSTEM) -> QueryResult:
        """Run one read-only statement over the reporting views (of one workspace, if given).

        A key's query always runs in its own workspace.

        Raises:
            QueryError: not read-only, or DuckDB refused it. Forbidden: outside the key's powers.
        """
        if isinstance(actor, Principal):
            workspace = workspace or actor.workspace
        if workspace is not None:
            workspace = actor.require(workspace, scope="batches:read", action="batches:read", doing="query usage")
        columns, rows = reporting.query(self.engine.settings, query, workspace=workspace)
        return QueryResult(columns=columns, rows=rows)

    def usage(self, day: str, *, actor: Actor = SYSTEM) -> UsageReport:
        """Write one day's (YYYY-MM-DD) usage_daily rows of every workspace as Parquet."""
        actor.require_operator(doing="write the usage report of every workspace")
        url, frame = reporting.write_usage_report(self.engine.settings, self.engine.storage, day)
        empty = frame.height == 0
        return UsageReport(day=day, url=url, rows=frame.height,
                           items=0 if empty else int(frame["items"].sum() or 0),
                           cost_usd_micros=0 if empty else int(frame["cost_usd_micros"].sum() or 0))  # fmt: skip

    def links(self, batch_id: str, *, workspace: str, actor: Actor = SYSTEM) -> BatchLinks:
        """Signed, expiring links (`delivery.link_expires_s`) to the batch's artifacts that exist.

        Raises:
            NotFound: no such batch in the workspace. Forbidden: outside the key's powers.
        """
        workspace = actor.require(workspace, scope="batches:read", action="batches:read", doing="get signed links")
        storage = self.engine.storage
        if (
            not _SAFE_NAME.fullmatch(batch_id)
            or not storage.exists(BATCHES, batch_id, "batch.json")
            or (storage.read_json(BATCHES, batch_id, "batch.json").get("workspace") != workspace)
        ):
            raise NotFound(f"no batch {batch_id!r} in workspace {workspace}")
        expires = self.engine.settings.delivery.link_expires_s
        found = {
            artifact: links.sign_link(self.engine.settings, storage, workspace, batch_id, artifact, expires_s=expires)
            for artifact in ARTIFACTS
            if storage.exists(BATCHES, batch_id, artifact)
        }
        return BatchLinks(batch_id=batch_id, expires_in_s=expires, links=found)

    def artifact(self, name: str, *, workspace: str, batch_id: str, expires: int | str, sig: str) -> Artifact:
        """The artifact a signed link names, once its signature and expiry check out (the link is the credential).

        Raises:
            LinkError: each refusal with its `code` and `http_status` (see `batchrouter.output.links`).
        """
        settings, storage = self.engine.settings, self.engine.storage
        key = links.resolve_link(settings, storage, workspace, batch_id, name, expires, sig)
        kind = "application/json" if key.endswith(".json") else "application/vnd.apache.parquet"
        return Artifact(key=key, media_type=kind, data=storage.read_bytes(key))
