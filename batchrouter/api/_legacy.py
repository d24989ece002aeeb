"""TEMPORARY: the engine services the API needs, over today's modules, until the engine's land on main.

Same names and signatures as the engine contract; deleted when the API is switched onto the engine.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict
from typing import Any

from batchrouter.access.accounts import ROLES, SCOPES, AccessError, Principal
from batchrouter.core.config import Settings
from batchrouter.core.errors import Forbidden, NotFound
from batchrouter.core.identity import canonical_email
from batchrouter.engine import BatchRouter
from batchrouter.money.billing import create_checkout, handle_webhook
from batchrouter.output import delivery, links


class Engine(BatchRouter):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.credits = _Credits(self)
        self.keys = _Keys(self)
        self.members = _Members(self)
        self.webhooks = _Webhooks(self)
        self.reports = _Reports(self)


class _Service:
    def __init__(self, engine: Engine) -> None:
        self.e = engine


class _Reports(_Service):
    def links(self, batch_id: str, *, workspace: str) -> dict[str, Any]:
        info = self.e.batches.info(batch_id, workspace=workspace)
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

    def history(self, workspace: str) -> builtins.list[dict[str, Any]]:
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
    def list(self, workspace: str, *, actor: Principal) -> builtins.list[dict[str, Any]]:
        return self.e.accounts.members(workspace)

    def set(self, email: str, *, workspace: str, role: str, actor: Principal) -> builtins.list[dict[str, Any]]:
        a = self.e.accounts
        email = canonical_email(email)
        if role == "owner" and actor.role != "owner":
            raise Forbidden("only an owner can make another owner")
        if a.role(workspace, email) == "owner" and actor.role != "owner":
            raise Forbidden("only an owner can change an owner's role")
        a.set_member(workspace, email, role, actor=actor.actor)
        return a.members(workspace)

    def remove(self, email: str, *, workspace: str, actor: Principal) -> builtins.list[dict[str, Any]]:
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

    def list(self, workspace: str, *, actor: Principal) -> builtins.list[dict[str, Any]]:
        return [k.public() for k in self.e.accounts.keys(workspace)]

    def create(
        self, workspace: str, *, name: str, scopes: builtins.list[str], expires_in: Any, actor: Principal
    ) -> Any:
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
    def list(self, workspace: str, *, actor: Principal) -> builtins.list[dict[str, Any]]:
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
