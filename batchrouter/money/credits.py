"""The credits service: a workspace's prepaid balance, its history, grants and Stripe purchases.

Rules: only the installation's operator grants credit, once per idempotency key; every credit (a
grant, a paid Checkout Session) and every checkout writes one audit event (`credits.granted`,
`credits.purchased`, `credits.checkout_created`). A purchase is credited once per Checkout Session
whichever way it arrives (webhook or reconciliation): see `batchrouter.money.billing`.

The money layer sits under access (see the import contracts): actors are only type-checked here,
and each actor answers for its own powers (`Principal.require`, `Operator.require`). A read without
`actor` is the engine's own, unchecked.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, PlainSerializer

from batchrouter.core.identity import canonical_workspace
from batchrouter.core.results import Timestamp
from batchrouter.money import billing
from batchrouter.money.billing import Fulfilment

if TYPE_CHECKING:
    from batchrouter.access.actors import Actor
    from batchrouter.engine import BatchRouter

# The ledger's history has always printed its times with str() (a space, not a "T").
JournalTime = Annotated[datetime, PlainSerializer(lambda value: str(value), return_type=str, when_used="json")]


class CreditBalance(BaseModel):
    """`GET /v1/credits`: credited = available + held + spent when `balanced`."""

    workspace: str
    available_usd_micros: int
    held_usd_micros: int
    spent_usd_micros: int
    credited_usd_micros: int
    balanced: bool


class JournalEntry(BaseModel):
    """One line of `GET /v1/credits/history`."""

    created_at: JournalTime
    op: str
    batch_id: str | None
    amount_usd_micros: int
    memo: str | None
    idempotency_key: str
    entry_id: str


class Granted(BaseModel):
    """A grant; `replayed` when its key was used before and nothing new was credited."""

    entry_id: str
    workspace: str
    amount_usd_micros: int
    key: str
    memo: str | None
    created_at: Timestamp
    replayed: bool


class CheckoutSession(BaseModel):
    """`POST /v1/credits/checkout`: pay at `url`."""

    session_id: str
    url: str


class StripeIgnored(BaseModel):
    """A genuine Stripe event that does not fulfil anything."""

    received: Literal[True] = True
    event: str
    type: str
    outcome: Literal["ignored"] = "ignored"


class StripeFulfilment(BaseModel):
    """A Checkout Session event; `outcome` says whether (and why not) it was credited."""

    received: Literal[True] = True
    event: str
    type: str
    session: str
    workspace: str | None
    # credited | already_credited | not_paid | unknown_pack | not_ours | invalid_workspace | amount_mismatch
    outcome: str
    credited_usd_micros: int


class Reconciliation(BaseModel):
    """What `reconcile` found: checkout events looked at, and those newly credited."""

    events: int
    credited: int
    credited_usd_micros: int


class Credits:
    def __init__(self, engine: BatchRouter) -> None:
        self.engine = engine

    def balance(self, workspace: str, *, actor: Actor | None = None) -> CreditBalance:
        """The workspace's balance."""
        workspace = self._reading(workspace, actor, "read the balance")
        return CreditBalance.model_validate(self.engine.ledger.balance(workspace).as_dict())

    def history(self, workspace: str, *, actor: Actor | None = None) -> list[JournalEntry]:
        """The workspace's journal, oldest first."""
        workspace = self._reading(workspace, actor, "read credit history")
        return [JournalEntry.model_validate(row) for row in self.engine.ledger.history(workspace)]

    @staticmethod
    def _reading(workspace: str, actor: Actor | None, doing: str) -> str:
        if actor is None:
            return canonical_workspace(workspace)
        return actor.require(workspace, scope="credits:read", action="credits:read", doing=doing)

    def grant(self, workspace: str, *, micros: int, key: str | None = None, memo: str | None = None,
              actor: Actor) -> Granted:  # fmt: skip
        """Credit promotional micro-dollars, once per `key` (no key: a new grant each time).

        Raises:
            Forbidden: an API key (only the operator grants).
            LedgerError: an invalid amount or key, or the key used before for another grant.
        """
        actor.require_operator(doing="grant credit")
        workspace = canonical_workspace(workspace)
        entry = self.engine.ledger.grant(workspace, micros, key=key or f"grant:{uuid.uuid4().hex}", memo=memo)
        if not entry.replayed:
            after = {"usd_micros": entry.amount_usd_micros, "memo": memo}
            self.engine.accounts.record(workspace, actor.actor, "credits.granted", entry.entry_id, after=after)
        return Granted(entry_id=entry.entry_id, workspace=entry.workspace, amount_usd_micros=entry.amount_usd_micros,
                       key=entry.idempotency_key, memo=entry.memo, created_at=entry.created_at,
                       replayed=entry.replayed)  # fmt: skip

    def checkout(self, workspace: str, *, pack: str, actor: Actor) -> CheckoutSession:
        """A Stripe Checkout Session for one configured credit pack.

        Raises:
            BillingError: an unknown pack, or Stripe refused. ConfigError: no Stripe key configured.
        """
        workspace = actor.require(workspace, scope="credits:write", action="credits:write", doing="buy credits")
        session_id, url = billing.create_checkout(self.engine.settings, workspace=workspace, pack=pack)
        self.engine.accounts.record(workspace, actor.actor, "credits.checkout_created", session_id,
                                    after={"pack": pack})  # fmt: skip
        return CheckoutSession(session_id=session_id, url=url)

    def stripe_webhook(self, payload: bytes, *, signature: str | None) -> StripeIgnored | StripeFulfilment:
        """Verify one Stripe delivery (the raw body and its `Stripe-Signature`) and credit what it paid for.

        Raises:
            SignatureError: not genuine. MalformedEvent: genuine, not shaped like a Stripe event.
            ConfigError: the webhook signing secret is not configured.
        """
        result = billing.handle_webhook(self.engine.settings, self.engine.ledger, payload, signature)
        if result["outcome"] == "ignored":
            return StripeIgnored(event=result["event"], type=result["type"])
        fulfilment = StripeFulfilment.model_validate(result)
        self._audit_purchase(fulfilment.session, fulfilment.workspace, fulfilment.outcome,
                             fulfilment.credited_usd_micros, by="stripe")  # fmt: skip
        return fulfilment

    def reconcile(self, *, since: int | None = None, actor: Actor | None = None) -> Reconciliation:
        """Credit paid Checkout Sessions of recent events that the webhook missed (idempotent).

        Raises:
            Forbidden: an API key. BillingError: Stripe could not be read.
        """
        if actor is not None:
            actor.require_operator(doing="reconcile Stripe payments")
        results: list[Fulfilment] = billing.reconcile(self.engine.settings, self.engine.ledger, since=since)
        for r in results:
            self._audit_purchase(r.session_id, r.workspace, r.outcome, r.credited_usd_micros, by="stripe:reconcile")
        credited = [r for r in results if r.outcome == "credited"]
        return Reconciliation(events=len(results), credited=len(credited),
                              credited_usd_micros=sum(r.credited_usd_micros for r in credited))  # fmt: skip

    def _audit_purchase(self, session: str, workspace: str | None, outcome: str, micros: int, *, by: str) -> None:
        if outcome == "credited":
            after: dict[str, Any] = {"credited_usd_micros": micros}
            self.engine.accounts.record(workspace or "unknown", by, "credits.purchased", session, after=after)
