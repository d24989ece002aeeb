"""The HTTP API (`batchrouter serve`): a Starlette app under /v1 with its OpenAPI document.

Every request but the Stripe webhook, signed artifact downloads, /healthz and /openapi.json needs
`Authorization: Bearer br_...`. Each endpoint names the key scope and the role action it needs
(`ENDPOINTS`); a key only ever sees its own workspace (other workspaces' batches and quotes answer
404, as if they did not exist). Every error carries a stable code, a message and a reference that
also appears in the server log. Keys are rate limited (token bucket): 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import subprocess
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchrouter.access.accounts import ROLES, SCOPES, Accounts, Principal
from batchrouter.batches.lifecycle import current_state, record_state
from batchrouter.batches.status import batch_status
from batchrouter.core.batch_info import BatchInfo, check_run_tag, load_batch
from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import Settings
from batchrouter.core.errors import BatchError, BatchRouterError, ConfigError
from batchrouter.core.identity import canonical_email
from batchrouter.core.storage import Storage
from batchrouter.engine import BatchRouter
from batchrouter.intake import drops as intake
from batchrouter.intake.manifest import read_manifest
from batchrouter.money.billing import MalformedEvent, SignatureError, create_checkout, handle_webhook
from batchrouter.money.ledger import Ledger
from batchrouter.output import delivery, links
from batchrouter.pricing.quote import build_quote

log = logging.getLogger("batchrouter.api")
QUOTES = "quotes"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before anything is read; a body sent
    without one (chunked) is read only up to the limit.
    """
    too_large = ApiError(413, "payload_too_large", f"{what} is over the limit of {limit:,} bytes; send less")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "invalid_request", "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def gunzip_bounded(data: bytes, limit: int, what: str) -> bytes:
    """Decompress a gzip body without ever holding more than `limit` decoded bytes (413 past it)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "invalid_request", f"{what} says Content-Encoding gzip but is not gzip ({exc})") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, "payload_too_large", f"{what} decompresses to over the limit of {limit:,} bytes")
    return out


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    reference = f"err_{uuid.uuid4().hex[:16]}"
    log.warning("%s %s %s: %s", reference, status, code, message)
    body = {"error": {"code": code, "message": message, "reference": reference}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- request bodies --------------------------------------------------------------------------------
class CreateBatch(BaseModel):
    quote_id: str = Field(pattern=r"^q_[0-9a-f]{24}$", description="the id of a quote made by POST /v1/quotes")
    run_tag: str | None = Field(
        default=None,
        max_length=64,
        description="run the same manifest again on purpose: a new tag makes a new batch (the same tag, the same one)",
    )

    @field_validator("run_tag")
    @classmethod
    def _run_tag(cls, value: str | None) -> str | None:
        try:
            return check_run_tag(value)
        except BatchError as exc:
            raise ValueError(str(exc)) from exc


class Checkout(BaseModel):
    pack: str = Field(min_length=1, max_length=64)


class SetMember(BaseModel):
    role: str = Field(pattern="^(owner|admin|member|viewer)$")


class CreateKey(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES))
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class AddWebhook(BaseModel):
    url: str = Field(min_length=8, max_length=2048, description="an https:// (or, in development, http://) URL")


class RotateKey(BaseModel):
    grace_hours: float = Field(default=24, ge=0, le=24 * 30)


class ErrorBody(BaseModel):
    code: str
    message: str
    reference: str


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[..., Awaitable[Response]]
    summary: str
    scope: str | None = None  # None: no API key (its own authentication, or public)
    action: str | None = None
    body: type[BaseModel] | None = None
    raw_body: bool = False


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = BatchRouter(settings)
        self.storage = Storage(settings.storage)
        self.ledger = Ledger(settings.database)
        self.accounts = Accounts(settings.database)
        self.buckets: dict[str, tuple[float, float]] = {}
        # Creates of one batch run one at a time in this process: the others then find its hold.
        self._creating: dict[str, threading.Lock] = {}
        self._creating_guard = threading.Lock()

    def _create_lock(self, batch_id: str) -> threading.Lock:
        with self._creating_guard:
            return self._creating.setdefault(batch_id, threading.Lock())

    # -- plumbing -------------------------------------------------------------------------------
    def rate_limit(self, principal: Principal) -> None:
        rate = self.settings.api.rate_limit_per_minute / 60.0
        capacity = float(self.settings.api.rate_limit_burst)
        now = time.monotonic()
        level, stamp = self.buckets.get(principal.key.key_id, (capacity, now))
        level = min(capacity, level + (now - stamp) * rate)
        if level < 1:
            wait = (1 - level) / rate
            self.buckets[principal.key.key_id] = (level, now)
            raise ApiError(429, "rate_limited", f"too many requests for this key; retry in {wait:.1f} s",
                           {"Retry-After": str(max(1, int(wait + 0.999)))})  # fmt: skip
        self.buckets[principal.key.key_id] = (level - 1, now)

    def authorise(self, request: Request, endpoint: Endpoint) -> Principal:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        principal = self.accounts.authenticate(token)
        self.rate_limit(principal)
        reason = self.accounts.suspension(principal.workspace)
        if reason is not None:
            raise ApiError(403, "workspace_suspended", f"workspace {principal.workspace} is suspended: {reason}")
        assert endpoint.scope is not None and endpoint.action is not None
        if not principal.allows(endpoint.scope, endpoint.action):
            raise ApiError(
                403,
                "forbidden",
                f"this key (scopes {', '.join(principal.key.scopes)}; role {principal.role}) may not "
                f"{endpoint.summary.lower()}: it needs scope {endpoint.scope} and role action {endpoint.action}",
            )
        return principal

    def wrap(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                args: list[Any] = [request]
                if endpoint.scope is not None:
                    args.append(await asyncio.to_thread(self.authorise, request, endpoint))
                if endpoint.body is not None:
                    raw = await read_body(request, self.settings.api.max_body_bytes, "the request body")
                    try:
                        args.append(endpoint.body.model_validate_json(raw or b"{}"))
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        where = ".".join(str(p) for p in first["loc"]) or "body"
                        raise ApiError(422, "invalid_request", f"{where}: {first['msg']}") from exc
                return await endpoint.handler(*args)
            except ApiError as exc:
                return error(exc.status, exc.code, exc.message, exc.headers)
            except BatchRouterError as exc:  # every deliberate error carries its public code and status
                return error(exc.http_status, exc.code, str(exc))
            except Exception:
                reference = f"err_{uuid.uuid4().hex[:16]}"
                log.error("%s unhandled error on %s %s\n%s", reference, request.method, request.url.path,
                          traceback.format_exc())  # fmt: skip
                body = {
                    "error": {"code": "internal_error", "message": "unexpected server error", "reference": reference}
                }
                return JSONResponse(body, status_code=500)

        return handle

    def batch_of(self, principal: Principal, batch_id: str) -> BatchInfo:
        if not _SAFE_NAME.match(batch_id):
            raise ApiError(404, "not_found", f"no batch {batch_id!r}")
        try:
            info = load_batch(self.storage, batch_id)
        except BatchError:
            raise ApiError(404, "not_found", f"no batch {batch_id!r} in workspace {principal.workspace}") from None
        if info.workspace != principal.workspace:
            raise ApiError(404, "not_found", f"no batch {batch_id!r} in workspace {principal.workspace}")
        return info

    # -- quotes and batches ---------------------------------------------------------------------
    async def create_quote(self, request: Request, principal: Principal) -> Response:
        filename = request.query_params.get("filename", "manifest.csv")
        name = posixpath.basename(filename)
        if not _SAFE_NAME.match(name):
            raise ApiError(422, "invalid_request", "filename: use letters, digits, '.', '-' or '_' (e.g. items.jsonl)")
        limit = min(self.settings.api.max_upload_bytes, self.settings.limits.max_manifest_bytes)
        data = await read_body(request, limit, "the manifest")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            data = gunzip_bounded(data, limit, "the manifest")
        elif encoding not in ("", "identity"):
            raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: send gzip or no encoding")
        if not data:
            raise ApiError(422, "invalid_request", "the request body must be the manifest file")

        def work() -> dict[str, Any]:
            catalog = load_catalog(self.settings.models)
            manifest = read_manifest(name, data, catalog=catalog, limits=self.settings.limits)
            policy = self.settings.workspace(principal.workspace).policy
            summary = build_quote(manifest, workspace=principal.workspace, catalog=catalog, policy=policy).summary()
            folder = (QUOTES, principal.workspace, summary["quote_id"])
            self.storage.write_bytes(data, *folder, "source", name)
            self.storage.write_json({**summary, "filename": name}, *folder, "quote.json")
            return summary

        summary = await asyncio.to_thread(work)
        return JSONResponse(summary, status_code=201)

    async def get_quote(self, request: Request, principal: Principal) -> Response:
        quote_id = request.path_params["quote_id"]
        if not re.fullmatch(r"q_[0-9a-f]{24}", quote_id) or not self.storage.exists(
            QUOTES, principal.workspace, quote_id, "quote.json"
        ):
            raise ApiError(404, "not_found", f"no quote {quote_id!r} in workspace {principal.workspace}")
        return JSONResponse(self.storage.read_json(QUOTES, principal.workspace, quote_id, "quote.json"))

    async def create_batch(self, request: Request, principal: Principal, body: CreateBatch) -> Response:
        def work() -> tuple[int, dict[str, Any]]:
            view = self.engine.batches.create(workspace=principal.workspace, quote_id=body.quote_id,
                                              run_tag=body.run_tag, actor=principal, approve=True)  # fmt: skip
            if not view.created:
                return 200, view.to_json()
            self.start(self.engine.batches.info(view.batch_id))
            return 201, self.engine.batches.status(view.batch_id).to_json()

        status, out = await asyncio.to_thread(work)
        return JSONResponse(out, status_code=status)

    def start(self, info: BatchInfo) -> None:
        """Hand the batch to the executor: the Dagster sensor (default) or a background `batchrouter run`.

        Until a run picks it up, the batch's status says where it waits; if none ever does, the
        sweeper releases its hold once the status has not moved for its staleness limit.
        """
        if self.settings.api.executor == "inline":
            source = self.storage.url(*info.folder("source", info.source_name))
            command = [sys.executable, "-m", "batchrouter.cli", "run", source, "--workspace", info.workspace,
                       "--settings-stdin"]  # fmt: skip
            if info.run_tag:
                command += ["--run-tag", info.run_tag]
            # Said before the run starts, so this never overwrites what the run itself reports.
            self._waiting(info, "inline", "handed to a background `batchrouter run` started by the API server")
            try:
                # The run uses this server's settings exactly (not whatever its environment would give).
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
                assert proc.stdin is not None
                proc.stdin.write(self.settings.model_dump_json().encode())
                proc.stdin.close()
            except OSError as exc:
                self._waiting(info, "inline", f"no run could be started ({exc}); the sweeper will release "
                                              "the reservation")  # fmt: skip
        else:
            data = self.storage.read_bytes(*info.folder("source", info.source_name))
            self._waiting(info, "sensor", "waiting for the Dagster manifest sensor to start a run: it runs only "
                                          "while `dagster dev` or the Dagster daemon is up; if no run starts, "
                                          "the sweeper releases the reservation")  # fmt: skip
            self.storage.write_bytes(data, "manifests", info.workspace, intake.dropped_name(info))

    def _waiting(self, info: BatchInfo, executor: str, message: str) -> None:
        """Say in the batch's status who is to run it, until a run moves it on."""
        current = self.storage.read_json(*info.folder("status.json"))
        details = {k: v for k, v in current.items() if k not in ("batch_id", "workspace", "status", "at", "message")}
        state = current_state(self.storage, info)
        record_state(self.storage, info, state, None, "api", **details, executor=executor, message=message)

    async def list_batches(self, request: Request, principal: Principal) -> Response:
        def work() -> list[dict[str, Any]]:
            keys = ("batch_id", "status", "submitted_at", "updated_at", "quote", "items_by_status", "actual_usd_micros")
            return [{k: v.to_json().get(k) for k in keys} for v in self.engine.batches.list(principal.workspace)]

        return JSONResponse({"batches": await asyncio.to_thread(work)})

    async def get_batch(self, request: Request, principal: Principal) -> Response:
        info = self.batch_of(principal, request.path_params["batch_id"])
        return JSONResponse(await asyncio.to_thread(batch_status, self.storage, self.settings, info))

    async def cancel_batch(self, request: Request, principal: Principal) -> Response:
        info = self.batch_of(principal, request.path_params["batch_id"])
        view = await asyncio.to_thread(self.engine.batches.cancel, info.batch_id, actor=principal)
        return JSONResponse(
            await asyncio.to_thread(batch_status, self.storage, self.settings, info) | {"status": view.status}
        )

    async def batch_links(self, request: Request, principal: Principal) -> Response:
        info = self.batch_of(principal, request.path_params["batch_id"])
        expires = self.settings.delivery.link_expires_s
        out = {}
        for artifact in ("outputs.parquet", "receipts.parquet", "summary.json", "quote.json"):
            if self.storage.exists(*info.folder(artifact)):
                out[artifact] = links.sign_link(self.settings, self.storage, info.workspace, info.batch_id, artifact,
                                                expires_s=expires)  # fmt: skip
        return JSONResponse({"batch_id": info.batch_id, "expires_in_s": expires, "links": out})

    async def artifact(self, request: Request) -> Response:
        p = request.path_params
        try:
            expires = int(request.query_params.get("expires", "0"))
        except ValueError:
            expires = 0
        try:
            key = links.resolve_link(self.settings, self.storage, p["workspace"], p["batch_id"], p["artifact"],
                                     expires, request.query_params.get("sig", ""))  # fmt: skip
        except links.LinkError as exc:
            return error(403 if exc.code != "not_found" else 404, exc.code, str(exc))
        data = await asyncio.to_thread(self.storage.read_bytes, key)
        kind = "application/json" if key.endswith(".json") else "application/vnd.apache.parquet"
        return Response(data, media_type=kind)

    # -- credits --------------------------------------------------------------------------------
    async def credits(self, request: Request, principal: Principal) -> Response:
        return JSONResponse(self.ledger.balance(principal.workspace).as_dict())

    async def credit_history(self, request: Request, principal: Principal) -> Response:
        rows = await asyncio.to_thread(self.ledger.history, principal.workspace)
        return JSONResponse({"entries": [{**r, "created_at": str(r["created_at"])} for r in rows]})

    async def checkout(self, request: Request, principal: Principal, body: Checkout) -> Response:
        session_id, url = await asyncio.to_thread(create_checkout, self.settings, workspace=principal.workspace,
                                                  pack=body.pack)  # fmt: skip
        self.accounts.record(principal.workspace, principal.actor, "credits.checkout_created", session_id,
                             after={"pack": body.pack})  # fmt: skip
        return JSONResponse({"session_id": session_id, "url": url}, status_code=201)

    async def stripe_webhook(self, request: Request) -> Response:
        # Unauthenticated: refuse what is not even signed before reading a byte, and cap what is.
        signature = request.headers.get("stripe-signature")
        if not signature:
            return error(400, "invalid_signature", "missing Stripe-Signature header")
        payload = await read_body(request, self.settings.api.max_body_bytes, "the webhook body")
        try:
            result = await asyncio.to_thread(handle_webhook, self.settings, self.ledger, payload, signature)
        except SignatureError as exc:
            return error(400, "invalid_signature", str(exc))
        except MalformedEvent as exc:
            return error(400, "malformed_event", str(exc))
        except ConfigError as exc:
            return error(503, "not_configured", str(exc))
        if result.get("outcome") == "credited":
            after = {"credited_usd_micros": result["credited_usd_micros"]}
            workspace = str(result.get("workspace") or "unknown")
            self.accounts.record(workspace, "stripe", "credits.purchased", str(result.get("session")), after=after)
        return JSONResponse(result)

    # -- members and keys -----------------------------------------------------------------------
    async def list_members(self, request: Request, principal: Principal) -> Response:
        return JSONResponse({"members": self.accounts.members(principal.workspace)})

    async def set_member(self, request: Request, principal: Principal, body: SetMember) -> Response:
        email = canonical_email(request.path_params["email"])
        if body.role == "owner" and principal.role != "owner":
            raise ApiError(403, "forbidden", "only an owner can make another owner")
        if self.accounts.role(principal.workspace, email) == "owner" and principal.role != "owner":
            raise ApiError(403, "forbidden", "only an owner can change an owner's role")
        await asyncio.to_thread(self.accounts.set_member, principal.workspace, email, body.role, actor=principal.actor)
        return JSONResponse({"members": self.accounts.members(principal.workspace)})

    async def remove_member(self, request: Request, principal: Principal) -> Response:
        email = canonical_email(request.path_params["email"])
        if self.accounts.role(principal.workspace, email) == "owner" and principal.role != "owner":
            raise ApiError(403, "forbidden", "only an owner can remove an owner")
        removed = await asyncio.to_thread(
            self.accounts.remove_member, principal.workspace, email, actor=principal.actor
        )
        if not removed:
            raise ApiError(404, "not_found", f"{email} is not a member of {principal.workspace}")
        return JSONResponse({"members": self.accounts.members(principal.workspace)})

    async def list_keys(self, request: Request, principal: Principal) -> Response:
        return JSONResponse({"keys": [k.public() for k in self.accounts.keys(principal.workspace)]})

    async def create_key(self, request: Request, principal: Principal, body: CreateKey) -> Response:
        unknown = sorted({s for s in body.scopes if s not in SCOPES})
        if unknown:
            raise ApiError(422, "invalid_scope", f"unknown scopes {', '.join(unknown)}; use {', '.join(SCOPES)}")
        extra = [s for s in body.scopes if s not in principal.key.scopes]
        if extra:
            raise ApiError(403, "forbidden", f"a key cannot grant scopes it does not hold: {', '.join(extra)}")
        full, key = await asyncio.to_thread(
            self.accounts.create_key, principal.workspace, name=body.name, scopes=body.scopes,
            created_by=principal.key.created_by, actor=principal.actor,
            expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
        )  # fmt: skip
        return JSONResponse({"key": full, **key.public(), "note": "store the key now: it is never shown again"},
                            status_code=201)  # fmt: skip

    def _may_manage(self, principal: Principal, key_id: str, verb: str) -> None:
        """A key manages its own member's keys; an owner or admin also those of members of no higher role."""
        old = next((k for k in self.accounts.keys(principal.workspace) if k.key_id == key_id), None)
        if old is None or old.created_by == principal.key.created_by:
            return
        creator = self.accounts.role(principal.workspace, old.created_by) or "viewer"
        if not (principal.role in ("owner", "admin") and ROLES.index(principal.role) <= ROLES.index(creator)):
            raise ApiError(403, "forbidden", f"{principal.role} {principal.key.created_by} may not {verb} "
                                             f"a key of {creator} {old.created_by}")  # fmt: skip

    async def revoke_key(self, request: Request, principal: Principal) -> Response:
        self._may_manage(principal, request.path_params["key_id"], "revoke")
        key = await asyncio.to_thread(self.accounts.revoke_key, principal.workspace, request.path_params["key_id"],
                                      actor=principal.actor)  # fmt: skip
        return JSONResponse({**key.public(), "revoked": True})

    async def rotate_key(self, request: Request, principal: Principal, body: RotateKey) -> Response:
        # The new key acts for the old key's creator, with its scopes, and is handed to the caller: so a
        # key may rotate only keys within its own powers (its own member's, or an owner's or admin's
        # over a member of no higher role) and holding no scope it lacks.
        key_id = request.path_params["key_id"]
        old = next((k for k in self.accounts.keys(principal.workspace) if k.key_id == key_id), None)
        if old is not None:
            extra = [s for s in old.scopes if s not in principal.key.scopes]
            creator = self.accounts.role(principal.workspace, old.created_by) or "viewer"
            outranks = principal.role in ("owner", "admin") and ROLES.index(principal.role) <= ROLES.index(creator)
            if extra:
                raise ApiError(403, "forbidden", f"a key cannot rotate a key with scopes it lacks: {', '.join(extra)}")
            if old.created_by != principal.key.created_by and not outranks:
                raise ApiError(403, "forbidden", f"{principal.role} {principal.key.created_by} may not rotate "
                                                 f"a key of {creator} {old.created_by}")  # fmt: skip
        full, key = await asyncio.to_thread(self.accounts.rotate_key, principal.workspace,
                                            request.path_params["key_id"], actor=principal.actor,
                                            grace=timedelta(hours=body.grace_hours))  # fmt: skip
        return JSONResponse({"key": full, **key.public(), "note": "store the key now: it is never shown again"},
                            status_code=201)  # fmt: skip

    async def list_webhooks(self, request: Request, principal: Principal) -> Response:
        found = await asyncio.to_thread(delivery.list_endpoints, self.settings, principal.workspace)
        return JSONResponse({"webhooks": [{**asdict(e), "created_at": e.created_at.isoformat()} for e in found]})

    async def add_webhook(self, request: Request, principal: Principal, body: AddWebhook) -> Response:
        try:
            endpoint_id, secret = await asyncio.to_thread(delivery.add_endpoint, self.settings, principal.workspace,
                                                          body.url)  # fmt: skip
        except delivery.EndpointRefused as exc:
            raise ApiError(422, "endpoint_refused", str(exc)) from exc
        self.accounts.record(
            principal.workspace, principal.actor, "webhook.added", endpoint_id, after={"url": body.url}
        )
        return JSONResponse({"endpoint_id": endpoint_id, "url": body.url, "secret": secret,
                             "note": "store the secret now: it signs every delivery and is never shown again"},
                            status_code=201)  # fmt: skip

    async def remove_webhook(self, request: Request, principal: Principal) -> Response:
        endpoint_id = request.path_params["endpoint_id"]
        try:
            await asyncio.to_thread(delivery.remove_endpoint, self.settings, principal.workspace, endpoint_id)
        except delivery.EndpointNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        self.accounts.record(principal.workspace, principal.actor, "webhook.removed", endpoint_id)
        return JSONResponse({"removed": endpoint_id})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.endpoints()))

    def endpoints(self) -> list[Endpoint]:
        E = Endpoint
        return [
            E("POST", "/v1/quotes", self.create_quote, "Preview a quote", "batches:write", "batches:write",
              raw_body=True),
            E("GET", "/v1/quotes/{quote_id}", self.get_quote, "Read a quote", "batches:read", "batches:read"),
            E("POST", "/v1/batches", self.create_batch, "Create a batch", "batches:write", "batches:write",
              CreateBatch),
            E("GET", "/v1/batches", self.list_batches, "List batches", "batches:read", "batches:read"),
            E("GET", "/v1/batches/{batch_id}", self.get_batch, "Read a batch", "batches:read", "batches:read"),
            E("POST", "/v1/batches/{batch_id}/cancel", self.cancel_batch, "Cancel a batch", "batches:write",
              "batches:write"),
            E("GET", "/v1/batches/{batch_id}/links", self.batch_links, "Get signed links", "batches:read",
              "batches:read"),
            E("GET", "/v1/artifacts/{workspace}/{batch_id}/{artifact}", self.artifact, "Download a signed artifact"),
            E("GET", "/v1/credits", self.credits, "Read the credit balance", "credits:read", "credits:read"),
            E("GET", "/v1/credits/history", self.credit_history, "Read credit history", "credits:read", "credits:read"),
            E("POST", "/v1/credits/checkout", self.checkout, "Buy credits", "credits:write", "credits:write", Checkout),
            E("POST", "/v1/stripe/webhook", self.stripe_webhook, "Receive a Stripe webhook", raw_body=True),
            E("GET", "/v1/members", self.list_members, "List members", "admin", "members:read"),
            E("PUT", "/v1/members/{email}", self.set_member, "Add or change a member", "admin", "members:write",
              SetMember),
            E("DELETE", "/v1/members/{email}", self.remove_member, "Remove a member", "admin", "members:write"),
            E("GET", "/v1/keys", self.list_keys, "List API keys", "admin", "keys:read"),
            E("POST", "/v1/keys", self.create_key, "Create an API key", "admin", "keys:write", CreateKey),
            E("POST", "/v1/keys/{key_id}/revoke", self.revoke_key, "Revoke an API key", "admin", "keys:write"),
            E("POST", "/v1/keys/{key_id}/rotate", self.rotate_key, "Rotate an API key", "admin", "keys:write",
              RotateKey),
            E("GET", "/v1/webhooks", self.list_webhooks, "List webhook endpoints", "admin", "webhooks:read"),
            E("POST", "/v1/webhooks", self.add_webhook, "Add a webhook endpoint", "admin", "webhooks:write",
              AddWebhook),
            E("DELETE", "/v1/webhooks/{endpoint_id}", self.remove_webhook, "Remove a webhook endpoint", "admin",
              "webhooks:write"),
            E("GET", "/healthz", self.health, "Health check"),
            E("GET", "/openapi.json", self.openapi, "This document"),
        ]  # fmt: skip


def openapi_document(endpoints: list[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document, built from the endpoint table (so it cannot drift from the routes)."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {
        "ErrorResponse": ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    }
    for e in endpoints:
        op: dict[str, Any] = {"summary": e.summary, "operationId": e.handler.__name__}
        params = re.findall(r"{(\w+)}", e.path)
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        if e.path == "/v1/quotes":
            op.setdefault("parameters", []).append(
                {"name": "filename", "in": "query", "required": False, "schema": {"type": "string"}}
            )
        if e.path.startswith("/v1/artifacts/"):
            op.setdefault("parameters", []).extend(
                [{"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                 {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}}]
            )  # fmt: skip
        if e.body is not None:
            schema = e.body.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[e.body.__name__] = schema
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{e.body.__name__}"}}},
            }
        elif e.raw_body:
            op["requestBody"] = {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        op["responses"] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            "201": {"description": "Created", "content": {"application/json": {"schema": {"type": "object"}}}},
            "4XX": {"description": "A client error: a stable code, a message and a reference", **error_ref},
        }
        if e.scope is not None:
            op["security"] = [{"apiKey": []}]
            op["description"] = f"Needs scope `{e.scope}` and role action `{e.action}`."
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "BatchRouter API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "br_<prefix>_<secret>"}},
        },
    }


def create_app(settings: Settings) -> Starlette:
    api = Api(settings)
    routes = [Route(e.path, api.wrap(e), methods=[e.method]) for e in api.endpoints()]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        return error(status, code, f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
