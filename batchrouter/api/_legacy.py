"""TEMPORARY: the engine services the API needs, over today's modules, until the engine's land on main.

Same names and signatures as the engine contract; deleted when the API is switched onto the engine.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict
from typing import Any

from batchrouter.access.accounts import ROLES, SCOPES, AccessError, Accounts, Principal
from batchrouter.batches import lifecycle as batches
from batchrouter.batches.status import batch_status
from batchrouter.core.config import Settings
from batchrouter.core.errors import BatchError, BatchRouterError
from batchrouter.core.identity import canonical_email
from batchrouter.core.storage import Storage
from batchrouter.intake import drops as intake
from batchrouter.intake.manifest import read_manifest
from batchrouter.money import settlement
from batchrouter.money.billing import create_checkout, handle_webhook
from batchrouter.money.ledger import Ledger
from batchrouter.output import delivery, links
from batchrouter.pricing.catalog import load_catalog
from batchrouter.pricing.quote import build_quote

QUOTES = "quotes"
_CREATING = threading.Lock()
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class NotFound(BatchRouterError):
    code = "not_found"
    http_status = 404


class Forbidden(BatchRouterError):
    code = "forbidden"
    http_status = 403


class View(dict[str, Any]):
    @property
    def batch_id(self) -> str:
        return str(self["batch_id"])

    created = True


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings.storage)
        self.ledger = Ledger(settings.database)
        self.accounts = Accounts(settings.database)
        self.batches = _Batches(self)
        self.credits = _Credits(self)
        self.keys = _Keys(self)
        self.members = _Members(self)
        self.webhooks = _Webhooks(self)
        self.reports = _Reports(self)


class _Service:
    def __init__(self, engine: Engine) -> None:
        self.e = engine


class _Batches(_Service):
    def _info(self, batch_id: str, workspace: str) -> batches.BatchInfo:
        if not _SAFE_NAME.match(batch_id):
            raise NotFound(f"no batch {batch_id!r}")
        try:
            info = batches.load_batch(self.e.storage, batch_id)
        except BatchError:
            raise NotFound(f"no batch {batch_id!r} in workspace {workspace}") from None
        if info.workspace != workspace:
            raise NotFound(f"no batch {batch_id!r} in workspace {workspace}")
        return info

    def preview(self, data: bytes, *, filename: str, workspace: str, keep: bool = False) -> dict[str, Any]:
        s = self.e.settings
        catalog = load_catalog(s.models)
        manifest = read_manifest(filename, data, catalog=catalog, limits=s.limits)
        policy = s.workspace(workspace).policy
        summary = build_quote(manifest, workspace=workspace, catalog=catalog, policy=policy).summary()
        folder = (QUOTES, workspace, summary["quote_id"])
        self.e.storage.write_bytes(data, *folder, "source", filename)
        self.e.storage.write_json({**summary, "filename": filename}, *folder, "quote.json")
        return summary

    def quote(self, quote_id: str, *, workspace: str) -> dict[str, Any]:
        if not re.fullmatch(r"q_[0-9a-f]{24}", quote_id) or not self.e.storage.exists(
            QUOTES, workspace, quote_id, "quote.json"
        ):
            raise NotFound(f"no quote {quote_id!r} in workspace {workspace}")
        out: dict[str, Any] = self.e.storage.read_json(QUOTES, workspace, quote_id, "quote.json")
        return out

    def create(self, *, workspace: str, quote_id: str, run_tag: str | None, actor: Principal, approve: bool) -> View:
        e = self.e
        quote = self.quote(quote_id, workspace=workspace)
        name = quote["filename"]
        data = e.storage.read_bytes(QUOTES, workspace, quote_id, "source", name)
        with _CREATING:
            return self._create(name, data, workspace=workspace, quote_id=quote_id, run_tag=run_tag, actor=actor)

    def _create(self, name: str, data: bytes, *, workspace: str, quote_id: str, run_tag: str | None,
                actor: Principal) -> View:  # fmt: skip
        e = self.e
        info = batches.submit(e.storage, workspace=workspace, source_name=name, data=data, run_tag=run_tag)
        if e.ledger.batch_holds(info.batch_id):
            return self._view(info, created=False)
        catalog = load_catalog(e.settings.models)
        manifest = batches.stage_manifest(e.storage, e.settings, catalog, info)
        priced = batches.stage_quote(e.storage, e.settings, catalog, info, manifest)
        batches.stage_route(e.storage, info, manifest, priced)
        settlement.approve(e.storage, info, by=actor.actor)
        entry = settlement.stage_reserve(e.storage, e.settings, info)
        if entry is None or entry.replayed:
            return self._view(info, created=False)
        after = {"quote_id": quote_id, "reserve_usd_micros": entry.amount_usd_micros, "run_tag": run_tag}
        e.accounts.record(workspace, actor.actor, "batch.created", info.batch_id, after=after)
        return self._view(info, created=True)

    def _view(self, info: batches.BatchInfo, *, created: bool) -> View:
        view = View(batch_status(self.e.storage, self.e.settings, info))
        view.created = created
        return view

    def hand_to_sensor(self, batch_id: str, *, message: str) -> View:
        info = batches.load_batch(self.e.storage, batch_id)
        data = self.e.storage.read_bytes(*info.folder("source", info.source_name))
        self.note(batch_id, executor="sensor", message=message)
        self.e.storage.write_bytes(data, "manifests", info.workspace, intake.dropped_name(info))
        return self._view(info, created=True)

    def note(self, batch_id: str, *, executor: str, message: str) -> View:
        info = batches.load_batch(self.e.storage, batch_id)
        current = self.e.storage.read_json(*info.folder("status.json"))
        details = {k: v for k, v in current.items() if k not in ("batch_id", "workspace", "status", "at", "message")}
        batches.set_status(self.e.storage, info, current["status"], **details, executor=executor, message=message)
        return self._view(info, created=True)

    def advance(self, batch_id: str) -> None:
        raise NotImplementedError("the inline executor needs the engine")

    def list(self, workspace: str) -> list[dict[str, Any]]:
        out = []
        for batch_id in self.e.storage.list(batches.BATCHES):
            try:
                info = batches.load_batch(self.e.storage, batch_id)
            except BatchError:
                continue
            if info.workspace == workspace:
                out.append(batch_status(self.e.storage, self.e.settings, info))
        return out

    def status(self, batch_id: str, *, workspace: str) -> dict[str, Any]:
        return batch_status(self.e.storage, self.e.settings, self._info(batch_id, workspace))

    def cancel(self, batch_id: str, *, actor: Principal) -> dict[str, Any]:
        e = self.e
        info = self._info(batch_id, actor.workspace)
        e.storage.write_json({"by": actor.actor, "at": time.time()}, *info.folder("cancel.json"))
        holds = e.ledger.batch_holds(info.batch_id)
        started = e.storage.exists(*info.folder("dispatch", "chunks"))
        if holds and holds[-1].status == "held" and not started:
            e.ledger.void(holds[-1].batch_id, reason=f"cancelled by {actor.actor}")
            batches.set_status(e.storage, info, "cancelled", by=actor.actor)
        e.accounts.record(actor.workspace, actor.actor, "batch.cancelled", info.batch_id)
        return batch_status(e.storage, e.settings, info)


class _Reports(_Service):
    def links(self, batch_id: str, *, workspace: str) -> dict[str, Any]:
        info = self.e.batches._info(batch_id, workspace)
        expires = self.e.settings.delivery.link_expires_s
        out = {}
        for artifact in ("outputs.parquet", "receipts.parquet", "summary.json", "quote.json"):
            if self.e.storage.exists(*info.folder(artifact)):
                out[artifact] = links.sign_link(self.e.settings, self.e.storage, info.workspace, info.batch_id,
                                                artifact, expires_s=expires)  # fmt: skip
        return {"batch_id": info.batch_id, "expires_in_s": expires, "links": out}

    def artifact(self, artifact: str, *, workspace: str, batch_id: str, expires: int, sig: str) -> tuple[bytes, str]:
        key = links.resolve_link(self.e.settings, self.e.storage, workspace, batch_id, artifact, expires, sig)
        kind = "application/json" if key.endswith(".json") else "application/vnd.apache.parquet"
        return self.e.storage.read_bytes(key), kind


class _Credits(_Service):
    def balance(self, workspace: str) -> dict[str, Any]:
        return self.e.ledger.balance(workspace).as_dict()

    def history(self, workspace: str) -> list[dict[str, Any]]:
        return [{**r, "created_at": str(r["created_at"])} for r in self.e.ledger.history(workspace)]

    def checkout(self, workspace: str, *, pack: str, actor: Principal) -> dict[str, Any]:
        session_id, url = create_checkout(self.e.settings, workspace=workspace, pack=pack)
        self.e.accounts.record(workspace, actor.actor, "credits.checkout_created", session_id, after={"pack": pack})
        return {"session_id": session_id, "url": url}

    def stripe_webhook(self, payload: bytes, *, signature: str) -> dict[str, Any]:
        result = handle_webhook(self.e.settings, self.e.ledger, payload, signature)
        if result.get("outcome") == "credited":
            after = {"credited_usd_micros": result["credited_usd_micros"]}
            workspace = str(result.get("workspace") or "unknown")
            self.e.accounts.record(workspace, "stripe", "credits.purchased", str(result.get("session")), after=after)
        return result


class _Members(_Service):
    def list(self, workspace: str, *, actor: Principal) -> list[dict[str, Any]]:
        return self.e.accounts.members(workspace)

    def set(self, email: str, *, workspace: str, role: str, actor: Principal) -> list[dict[str, Any]]:
        a = self.e.accounts
        email = canonical_email(email)
        if role == "owner" and actor.role != "owner":
            raise Forbidden("only an owner can make another owner")
        if a.role(workspace, email) == "owner" and actor.role != "owner":
            raise Forbidden("only an owner can change an owner's role")
        a.set_member(workspace, email, role, actor=actor.actor)
        return a.members(workspace)

    def remove(self, email: str, *, workspace: str, actor: Principal) -> list[dict[str, Any]]:
        a = self.e.accounts
        email = canonical_email(email)
        if a.role(workspace, email) == "owner" and actor.role != "owner":
            raise Forbidden("only an owner can remove an owner")
        if not a.remove_member(workspace, email, actor=actor.actor):
            raise NotFound(f"{email} is not a member of {workspace}")
        return a.members(workspace)


class _Keys(_Service):
    def authenticate(self, token: str | None) -> Principal:
        return self.e.accounts.authenticate(token)

    def list(self, workspace: str, *, actor: Principal) -> list[dict[str, Any]]:
        return [k.public() for k in self.e.accounts.keys(workspace)]

    def create(self, workspace: str, *, name: str, scopes: list[str], expires_in: Any, actor: Principal) -> Any:
        unknown = sorted({s for s in scopes if s not in SCOPES})
        if unknown:
            raise AccessError("invalid_scope", f"unknown scopes {', '.join(unknown)}; use {', '.join(SCOPES)}", 422)
        extra = [s for s in scopes if s not in actor.key.scopes]
        if extra:
            raise Forbidden(f"a key cannot grant scopes it does not hold: {', '.join(extra)}")
        full, key = self.e.accounts.create_key(workspace, name=name, scopes=scopes, created_by=actor.key.created_by,
                                               actor=actor.actor, expires_in=expires_in)  # fmt: skip
        return {"key": full, **key.public(), "note": "store the key now: it is never shown again"}

    def _may_manage(self, actor: Principal, key_id: str, verb: str) -> None:
        old = next((k for k in self.e.accounts.keys(actor.workspace) if k.key_id == key_id), None)
        if old is None or old.created_by == actor.key.created_by:
            return
        creator = self.e.accounts.role(actor.workspace, old.created_by) or "viewer"
        if not (actor.role in ("owner", "admin") and ROLES.index(actor.role) <= ROLES.index(creator)):
            raise Forbidden(f"{actor.role} {actor.key.created_by} may not {verb} a key of {creator} {old.created_by}")

    def revoke(self, key_id: str, *, workspace: str, actor: Principal) -> dict[str, Any]:
        self._may_manage(actor, key_id, "revoke")
        key = self.e.accounts.revoke_key(workspace, key_id, actor=actor.actor)
        return {**key.public(), "revoked": True}

    def rotate(self, key_id: str, *, workspace: str, grace: Any, actor: Principal) -> dict[str, Any]:
        old = next((k for k in self.e.accounts.keys(workspace) if k.key_id == key_id), None)
        if old is not None:
            extra = [s for s in old.scopes if s not in actor.key.scopes]
            if extra:
                raise Forbidden(f"a key cannot rotate a key with scopes it lacks: {', '.join(extra)}")
            self._may_manage(actor, key_id, "rotate")
        full, key = self.e.accounts.rotate_key(workspace, key_id, actor=actor.actor, grace=grace)
        return {"key": full, **key.public(), "note": "store the key now: it is never shown again"}


class _Webhooks(_Service):
    def list(self, workspace: str, *, actor: Principal) -> list[dict[str, Any]]:
        found = delivery.list_endpoints(self.e.settings, workspace)
        return [{**asdict(e), "created_at": e.created_at.isoformat()} for e in found]

    def add(self, url: str, *, workspace: str, actor: Principal) -> dict[str, Any]:
        endpoint_id, secret = delivery.add_endpoint(self.e.settings, workspace, url)
        self.e.accounts.record(workspace, actor.actor, "webhook.added", endpoint_id, after={"url": url})
        return {"endpoint_id": endpoint_id, "url": url, "secret": secret,
                "note": "store the secret now: it signs every delivery and is never shown again"}  # fmt: skip

    def remove(self, endpoint_id: str, *, workspace: str, actor: Principal) -> None:
        try:
            delivery.remove_endpoint(self.e.settings, workspace, endpoint_id)
        except delivery.EndpointNotFound as exc:
            raise NotFound(str(exc)) from exc
        self.e.accounts.record(workspace, actor.actor, "webhook.removed", endpoint_id)
