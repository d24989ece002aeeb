"""The batches service: the one place that runs a batch's lifecycle (`engine.batches`).

Every face (the CLI, the API, the Dagster assets and sensors) asks this service; none assembles the
stages itself. Each method takes one subject (manifest bytes or a batch id) and keyword options,
checks who acts, moves the batch through the state machine (`batchrouter.batches.states`) and
returns a typed result (`batchrouter.batches.results`). Calling a method again is safe: a batch that
is quoted is not quoted again, a reserved round is not reserved again, a settled round is not
settled again.
"""

from __future__ import annotations

import builtins
import hashlib
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from batchrouter.access.accounts import Principal
from batchrouter.access.actors import SYSTEM, Actor
from batchrouter.batches import batch_lane, lifecycle, settlement
from batchrouter.batches.leases import Leases, is_dead, owner_name
from batchrouter.batches.lifecycle import current_state, record_state
from batchrouter.batches.results import BatchView, Progress, QuoteSummary, RunSummary
from batchrouter.batches.states import ALLOWED, BatchState
from batchrouter.batches.status import batch_status
from batchrouter.core.batch_info import BATCHES, BatchInfo, batch_id_for, check_run_tag, load_batch
from batchrouter.core.durations import ASAP, parse_deadline
from batchrouter.core.errors import AwaitingApproval, BatchBusy, BatchError, Forbidden, ManifestError, NotFound
from batchrouter.execution.checkpoint import Checkpoint
from batchrouter.intake import drops
from batchrouter.intake.manifest import read_manifest
from batchrouter.intake.quarantine import quarantine
from batchrouter.money.ledger import HoldStatus
from batchrouter.output import delivery
from batchrouter.pricing.quote import build_quote
from batchrouter.pricing.routing import providers_for

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

QUOTES = "quotes"
_QUOTE_ID = re.compile(r"q_[0-9a-f]{24}")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,160}")
_HANDED_TO = {
    "inline": "handed to a run in a background thread of the API server",
    "sensor": "waiting for the Dagster manifest sensor to start a run: it runs only while `dagster dev` or the "
    "Dagster daemon is up; if no run starts, the sweeper releases the reservation",
}
# States in which `advance` has something to do without anyone acting first.
_RETRYABLE = frozenset({BatchState.PARTIALLY_FAILED, BatchState.FAILED, BatchState.EXPIRED})


class Batches:
    def __init__(self, engine: BatchRouter) -> None:
        self._engine = engine
        # Creates of one batch run one at a time in this process: the others then find its hold.
        self._creating: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._owners: dict[str, str] = {}  # batch id -> this process's lease owner while it runs the batch

    # -- reading ----------------------------------------------------------------------------------
    def info(self, batch_id: str, *, workspace: str | None = None) -> BatchInfo:
        """The batch's record; with `workspace`, a batch of another workspace is not found."""
        if not _SAFE_ID.fullmatch(batch_id):
            raise NotFound(f"no batch {batch_id!r}: batch ids are letters, digits, '-', '_' and '.'")
        where = f" in workspace {workspace}" if workspace else ""
        try:
            info = load_batch(self._engine.storage, batch_id)
        except BatchError:
            raise NotFound(f"no batch {batch_id!r}{where}") from None
        if workspace is not None and info.workspace != workspace:
            raise NotFound(f"no batch {batch_id!r}{where}")
        return info

    def status(self, batch_id: str, *, workspace: str | None = None) -> BatchView:
        return self._view(self.info(batch_id, workspace=workspace))

    def list(self, workspace: str) -> list[BatchView]:
        """The workspace's batches, oldest first."""
        return [self._view(info) for info in self.records(workspace)]

    def records(self, workspace: str) -> builtins.list[BatchInfo]:
        """The workspace's batch records, oldest first: cheap (no status, quote or ledger is read), for paging."""
        out = []
        for batch_id in self._engine.storage.list(BATCHES):
            try:
                info = load_batch(self._engine.storage, batch_id)
            except BatchError:
                continue
            if info.workspace == workspace:
                out.append(info)
        return sorted(out, key=lambda i: (i.submitted_at, i.batch_id))

    def _view(self, info: BatchInfo, *, created: bool = False) -> BatchView:
        status = batch_status(self._engine.storage, self._engine.settings, info)
        state = current_state(self._engine.storage, info)
        return BatchView.model_validate({**status, "state": state, "status": str(state), "created": created})

    # -- quotes -----------------------------------------------------------------------------------
    def preview(
        self, data: bytes, *, filename: str, workspace: str, keep: bool = False, deadline: str | float | None = None
    ) -> QuoteSummary:
        """Validate and price a manifest; nothing is reserved or sent.

        With `keep`, the quote and the manifest are stored so `create(quote_id=...)` can make the batch
        the customer saw priced. An unusable manifest is quarantined with a report, then raised.
        `deadline` (else the workspace's default) picks each route's lane, as `create` would.
        """
        engine = self._engine
        name = posixpath.basename(filename)
        try:
            manifest = read_manifest(name, data, catalog=engine.catalog, limits=engine.settings.limits)
        except ManifestError as exc:
            exc.report = quarantine(engine.storage, workspace=workspace, source_name=name, data=data, error=exc)
            raise
        policy = engine.settings.workspace(workspace).policy
        deadline_s = engine.settings.deadline_s(workspace, _deadline(deadline))
        chooser = lifecycle.lane_chooser(engine.storage, engine.settings, engine.catalog, deadline_s)
        summary = build_quote(manifest, workspace=workspace, catalog=engine.catalog, policy=policy, lanes=chooser,
                              deadline_s=deadline_s).summary()  # fmt: skip
        if keep:
            folder = (QUOTES, workspace, summary["quote_id"])
            engine.storage.write_bytes(data, *folder, "source", name)
            engine.storage.write_json({**summary, "filename": name}, *folder, "quote.json")
        return QuoteSummary.model_validate(summary)

    def quote(self, quote_id: str, *, workspace: str) -> QuoteSummary:
        """A quote kept by `preview(keep=True)`."""
        folder = (QUOTES, workspace, quote_id)
        if not _QUOTE_ID.fullmatch(quote_id) or not self._engine.storage.exists(*folder, "quote.json"):
            raise NotFound(f"no quote {quote_id!r} in workspace {workspace}")
        return QuoteSummary.model_validate(self._engine.storage.read_json(*folder, "quote.json"))

    # -- making a batch ---------------------------------------------------------------------------
    def submit(
        self,
        data: bytes,
        *,
        filename: str,
        workspace: str,
        run_tag: str | None = None,
        source_key: str | None = None,
        deadline: str | float | None = None,
    ) -> BatchView:
        """Register a manifest as a batch (idempotent: the same bytes and run tag are the same batch).

        `deadline`: a duration ("24h", "30m", seconds) within which every item is to be answered; the
        cheapest lanes that make it are chosen. None: the workspace's default deadline, else at once.
        """
        info = lifecycle.submit(self._engine.storage, workspace=workspace, source_name=filename, data=data,
                                source_key=source_key, run_tag=run_tag, deadline_s=_deadline(deadline))  # fmt: skip
        return self._view(info)

    def create(
        self,
        data: bytes | None = None,
        *,
        workspace: str,
        actor: Actor,
        filename: str | None = None,
        quote_id: str | None = None,
        run_tag: str | None = None,
        source_key: str | None = None,
        approve: bool = False,
        deadline: str | float | None = None,
    ) -> BatchView:
        """Make a batch ready to dispatch: register, validate, quote, route, approval gate, reserve.

        Give the manifest's bytes (with `filename`) or the id of a kept quote. `approve=True` makes
        creating the batch the approval of its quote. Returns the batch `reserved`, or
        `awaiting_approval` when its quote is over the workspace's auto-approval limit; `created` is
        False when the batch already existed.

        Raises:
            ManifestError: the manifest is unusable (quarantined with a report).
            InsufficientCredits: the workspace's credit does not cover the quote (the batch waits in
                `insufficient_credits`; creating it again once credit is there goes on).
        """
        self._may_act(actor, workspace)
        if quote_id is not None:
            kept = self.quote(quote_id, workspace=workspace)
            filename = self._engine.storage.read_json(QUOTES, workspace, quote_id, "quote.json")["filename"]
            assert filename is not None
            data = self._engine.storage.read_bytes(QUOTES, workspace, quote_id, "source", filename)
            if deadline is None:  # the terms the customer saw: a quote without a deadline was all online
                deadline = kept.deadline_s if kept.deadline_s is not None else ASAP
        if data is None or filename is None:
            raise BatchError("create a batch from a manifest (data and filename) or from a quote_id")
        run_tag = check_run_tag(run_tag)
        batch_id = batch_id_for(workspace, hashlib.sha256(data).hexdigest(), run_tag=run_tag)
        with self._create_lock(batch_id):
            info = lifecycle.submit(self._engine.storage, workspace=workspace, source_name=filename, data=data,
                                    source_key=source_key, run_tag=run_tag, deadline_s=_deadline(deadline))  # fmt: skip
            if self._engine.ledger.batch_holds(info.batch_id):
                return self._view(info)  # made already: running it again is `advance` or `retry`, never a create
            with self._lease(info.batch_id, actor, wait=False) as leased:
                created = leased and self._prepare(info, actor=actor, approve=approve)
        return self._view(info, created=created)

    @contextmanager
    def _lease(self, batch_id: str, actor: Actor, *, wait: bool = True) -> Iterator[bool]:
        """Hold the batch's lease for the block (True), so no other process advances it meanwhile.

        Another process holding it: with `wait`, raises BatchBusy; without, yields False.
        """
        leases, owner = self._leases, owner_name(actor.actor)
        busy = leases.claim(batch_id, owner, ttl_s=self._lease_s)
        if busy is not None and is_dead(busy):  # killed on this host: its run is over, take it on
            busy = leases.claim(batch_id, owner, ttl_s=self._lease_s, replacing=busy)
        if busy is not None:
            if wait:
                raise BatchBusy(f"batch {batch_id} is being run by {busy} (its lease runs until "
                                f"{leases.expiry(batch_id)}); wait for that run or cancel the batch")  # fmt: skip
            yield False
            return
        self._owners[batch_id] = owner
        try:
            yield True
        finally:
            self._owners.pop(batch_id, None)
            leases.release(batch_id, owner)

    def _renew(self, batch_id: str) -> None:
        owner = self._owners.get(batch_id)
        if owner is not None:
            self._leases.renew(batch_id, owner, ttl_s=self._lease_s)

    @cached_property
    def _leases(self) -> Leases:
        return Leases(self._engine.settings.database)

    @property
    def _lease_s(self) -> float:
        return self._engine.settings.dispatch.stale_after_minutes * 60.0

    def _create_lock(self, batch_id: str) -> threading.Lock:
        with self._guard:
            return self._creating.setdefault(batch_id, threading.Lock())

    def _prepare(self, info: BatchInfo, *, actor: Actor, approve: bool) -> bool:
        """Quote (once), gate and reserve; True when this call made the reservation."""
        engine = self._engine
        storage, settings = engine.storage, engine.settings
        state = current_state(storage, info)
        if state == BatchState.UNUSABLE_MANIFEST:
            status = storage.read_json(*info.folder("status.json"))
            raise ManifestError(info.source_name, status.get("problem") or status.get("error", "unusable"),
                                status.get("fix") or "fix the manifest and submit it again")  # fmt: skip
        if state.terminal or state in (BatchState.RESERVED, BatchState.DISPATCHING, BatchState.WAITING_ON_PROVIDER):
            return False
        if state == BatchState.SUBMITTED or not storage.exists(*info.folder("quote.json")):
            manifest = lifecycle.stage_manifest(storage, settings, engine.catalog, info)
            priced = lifecycle.stage_quote(storage, settings, engine.catalog, info, manifest)
            lifecycle.stage_route(storage, info, manifest, priced)
        if approve:
            settlement.approve(storage, info, by=actor.actor)
        if not settlement.gate(storage, settings, info):
            return False
        entry = settlement.stage_reserve(storage, settings, info)
        if entry is None or entry.replayed:
            return False
        if isinstance(actor, Principal) or approve:
            engine.accounts.record(info.workspace, actor.actor, "batch.created", info.batch_id,
                                   after={"reserve_usd_micros": entry.amount_usd_micros,
                                          "run_tag": info.run_tag})  # fmt: skip
        return True

    def accept_drop(self, dropped: drops.Dropped) -> BatchView:
        """The manifest sensor's rule for a file dropped under `manifests/<workspace>/`.

        Raises:
            Forbidden: the workspace is suspended, or the folder is not a valid workspace name; the file
                is quarantined with a report (so one bad drop never holds up the others).
        """
        engine = self._engine
        suspended = engine.accounts.suspension(dropped.workspace)
        if suspended is not None:
            report = drops.refuse(engine.storage, dropped, problem=f"workspace {dropped.workspace} is suspended "
                                  f"({suspended})", fix="contact support to resume the workspace, then drop the "
                                  "manifest again")  # fmt: skip
            raise Forbidden(f"quarantined {dropped.key}: workspace suspended; report at {report}")
        name, run_tag = drops.source_of(dropped)
        try:
            return self.submit(engine.storage.read_bytes(dropped.key), filename=name, workspace=dropped.workspace,
                               run_tag=run_tag, source_key=dropped.key)  # fmt: skip
        except BatchError as exc:
            fix = "drop it under manifests/<workspace>/ where <workspace> is a valid workspace name"
            report = drops.refuse(engine.storage, dropped, problem=str(exc), fix=fix)
            raise Forbidden(f"quarantined {dropped.key}: {exc}; report at {report}") from exc

    def hand_off(self, batch_id: str, *, to: Literal["inline", "sensor"]) -> BatchView:
        """Say in the batch's status who is to run it (until a run moves it on), and hand it over.

        `sensor`: its manifest is dropped under `manifests/<workspace>/` for the Dagster manifest
        sensor. `inline`: the caller runs `advance` itself (the API server, in a thread). If no run ever
        starts, the sweeper releases the reservation once the status has not moved for its limit.
        """
        storage = self._engine.storage
        info = self.info(batch_id)
        current = storage.read_json(*info.folder("status.json"))
        details = {k: v for k, v in current.items() if k not in ("batch_id", "workspace", "status", "at", "message")}
        message = _HANDED_TO[to]
        record_state(storage, info, current_state(storage, info), None, "api", **details, executor=to,
                     message=message)  # fmt: skip
        view = self._view(info)
        if to == "sensor":
            data = storage.read_bytes(*info.folder("source", info.source_name))
            storage.write_bytes(data, drops.MANIFESTS, info.workspace, drops.dropped_name(info))
        return view

    # -- running it -------------------------------------------------------------------------------
    def advance(
        self,
        batch_id: str,
        *,
        actor: Actor = SYSTEM,
        on_progress: Callable[[Progress], None] | None = None,
        simulator_url: str | None = None,
    ) -> RunSummary:
        """Do whatever is next for the batch, up to its end: quote and reserve if not yet, dispatch every
        item without an answer, write outputs and receipts, settle exactly once, queue its webhook.

        Safe to call again at any time; on a batch with failed items it opens a new round for them.

        Raises:
            AwaitingApproval: the quote is over the auto-approval limit and nobody approved it yet.
            InsufficientCredits: the reservation could not be made.
            ManifestError: the manifest is unusable.
        """
        info = self.info(batch_id)
        with self._lease(info.batch_id, actor):
            return self._advance(info, actor=actor, on_progress=on_progress, simulator_url=simulator_url)

    def _advance(
        self,
        info: BatchInfo,
        *,
        actor: Actor,
        on_progress: Callable[[Progress], None] | None,
        simulator_url: str | None,
    ) -> RunSummary:
        engine = self._engine
        storage, settings = engine.storage, engine.settings
        self._prepare(info, actor=actor, approve=False)
        state = current_state(storage, info)
        if state == BatchState.AWAITING_APPROVAL:
            message = storage.read_json(*info.folder("status.json")).get("message", "")
            raise AwaitingApproval(f"batch {info.batch_id} is waiting: {message}")
        if state not in (BatchState.COMPLETED, BatchState.CANCELLED) or not storage.exists(
            *info.folder("receipts.parquet")
        ):
            progress = _progress(on_progress)
            summary = lifecycle.stage_dispatch(storage, settings, engine.catalog, info, on_progress=progress,
                                               simulator_url=simulator_url,
                                               on_heartbeat=lambda: self._renew(info.batch_id))  # fmt: skip
            if summary["pending"] and storage.exists(*info.folder("cancel.json")):
                # Cancelled while this run went on (it held the lease, so `cancel` left the ending to it): one
                # more pass, cancelled from its start, cancels the provider batches made meanwhile and ends
                # every line still unanswered, so the batch settles now rather than waiting for ever.
                summary = lifecycle.stage_dispatch(storage, settings, engine.catalog, info, on_progress=progress,
                                                   simulator_url=simulator_url,
                                                   on_heartbeat=lambda: self._renew(info.batch_id))  # fmt: skip
        else:
            summary = lifecycle.write_results(storage, info)
        if not summary["pending"] and engine.ledger.batch_holds(info.batch_id):
            summary["settlement"] = settlement.stage_settle(storage, settings, info)
            attempts = delivery.deliver_batch_completed(settings, storage, info)
            summary["webhooks"] = [{"endpoint_id": a.endpoint_id, "status_code": a.status_code} for a in attempts]
        state = current_state(storage, info)
        return RunSummary.model_validate({**summary, "state": state, "status": str(state)})

    def results(self, batch_id: str) -> RunSummary:
        """The run summary from what the batch's files say now (nothing is sent or settled)."""
        info = self.info(batch_id)
        state = current_state(self._engine.storage, info)
        summary = lifecycle.write_results(self._engine.storage, info)
        return RunSummary.model_validate({**summary, "state": state, "status": str(state)})

    def approve(self, batch_id: str, *, actor: Actor) -> BatchView:
        """Approve the batch's quote: the next `advance` (or the approval sensor) reserves and runs it."""
        info = self.info(batch_id, workspace=_workspace_of(actor))
        self._may_act(actor, info.workspace)
        settlement.approve(self._engine.storage, info, by=actor.actor)
        self._engine.accounts.record(info.workspace, actor.actor, "batch.approved", info.batch_id)
        return self._view(info)

    def providers(self, batch_id: str) -> builtins.list[str]:
        """The providers the batch's items may be sent to under its workspace's policy (none when its
        manifest is unusable). Read from the manifest's models without quoting, so a scheduler can hold a
        run to each provider's limit before it starts (Dagster's per-provider run limits)."""
        engine = self._engine
        info = self.info(batch_id)
        if engine.storage.exists(*info.folder("manifest.parquet")):
            items = lifecycle.load_manifest(engine.storage, info).items
        else:
            data = engine.storage.read_bytes(*info.folder("source", info.source_name))
            try:
                items = read_manifest(info.source_name, data, catalog=engine.catalog,
                                      limits=engine.settings.limits).items  # fmt: skip
            except ManifestError:
                return []  # the run quarantines it, sending nothing
        if "model" not in items.columns:
            return []
        models = items["model"].drop_nulls().unique().to_list()
        return providers_for(models, catalog=engine.catalog, policy=engine.settings.workspace(info.workspace).policy)

    def waiting_due(self) -> builtins.list[str]:
        """Batches waiting on a provider that an advance would move on now (the provider-batch sensor's list).

        Looks at each waiting batch when its backoff says so: polls its provider batches (without
        changing the batch), and lists it when one ended, is gone, or is past its hedge time; otherwise
        the next look waits longer (`lanes.poll_interval_s`, doubling up to `lanes.poll_max_s`).
        """
        engine = self._engine
        storage, settings = engine.storage, engine.settings
        out = []
        for batch_id, polls in batch_lane.due(storage):
            try:
                info = load_batch(storage, batch_id)
            except BatchError:
                batch_lane.forget_waiting(storage, batch_id)  # its folder is gone: nothing waits any more
                continue
            lane = batch_lane.BatchLane(storage, settings, engine.catalog, info, record=lambda result: None)
            ready = lane.ready()
            if ready is True:
                out.append(batch_id)
                # Not asked for again before its run had time to go on (the run sets its next look).
                again = time.time() + settings.lanes.wall_s(settings.lanes.poll_delay_s(0))
                batch_lane.mark_waiting(storage, info, again, polls=polls)
            elif ready is False:
                batch_lane.mark_waiting(storage, info, lane.next_poll_wall(polls + 1), polls=polls + 1)
            else:  # the provider asked us to wait
                batch_lane.mark_waiting(storage, info, time.time() + ready, polls=polls)
        return out

    def interrupted(self) -> builtins.list[str]:
        """Batches whose run died before they were done (a process killed mid-dispatch): `advance` goes on.

        Such a run left its lease behind (a run that ends releases it), held by a process of this host
        that is gone or run out; the batch is still reserved or dispatching, its reservation held. The
        next `advance` takes the lease over and sends only what the checkpoint has no answer for. A
        batch waiting on its providers' batches is not listed: `waiting_due` says when it is due.
        """
        storage = self._engine.storage
        out = []
        for batch_id, owner, live in self._leases.left():
            if live and not is_dead(owner):
                continue
            try:
                info = load_batch(storage, batch_id)
            except BatchError:
                continue  # its folder is gone: nothing to run
            if current_state(storage, info) in (BatchState.RESERVED, BatchState.DISPATCHING):
                out.append(batch_id)
        return out

    def next_look_s(self, batch_id: str) -> float | None:
        """Seconds until a batch waiting on its providers is worth advancing again (None: it is not waiting)."""
        info = self.info(batch_id)
        if current_state(self._engine.storage, info) != BatchState.WAITING_ON_PROVIDER:
            return None
        lane = batch_lane.BatchLane(self._engine.storage, self._engine.settings, self._engine.catalog, info,
                                    record=lambda result: None)  # fmt: skip
        at = lane.next_poll_wall()
        return None if at is None else max(0.0, at - time.time())

    def approved_waiting(self) -> builtins.list[str]:
        """Batches at the approval gate that have since been approved (the approval sensor's list)."""
        out = []
        for batch_id in settlement.awaiting(self._engine.storage):
            try:
                info = load_batch(self._engine.storage, batch_id)
            except BatchError:
                continue  # a stale marker (its batch removed from the bucket) must not block the others
            if settlement.is_approved(self._engine.storage, self._engine.settings, info):
                out.append(batch_id)
        return out

    def cancel(self, batch_id: str, *, actor: Actor) -> BatchView:
        """Cancel the batch: nothing more is sent; a reservation not yet used is released at once.

        Items already answered are kept and settled; a run in progress (another process holding the
        batch's lease) stops within a second and settles them itself.
        """
        engine = self._engine
        info = self.info(batch_id, workspace=_workspace_of(actor))
        self._may_act(actor, info.workspace)
        state = current_state(engine.storage, info)
        if state.terminal:
            return self._view(info)
        engine.storage.write_json({"by": actor.actor, "at": time.time()}, *info.folder("cancel.json"))
        engine.accounts.record(info.workspace, actor.actor, "batch.cancelled", info.batch_id)
        with self._lease(info.batch_id, actor, wait=False) as idle:
            if not idle:
                return self._view(info)  # the run in progress sees the cancel, ends the rest unsent and settles
            holds = engine.ledger.batch_holds(info.batch_id)
            held = bool(holds) and holds[-1].status == HoldStatus.HELD
            in_flight = engine.storage.exists(*info.folder(batch_lane.FOLDER))
            if held and (in_flight or Checkpoint(engine.storage, info.batch_id).load().height):
                # A run died after some answers, or provider batches are out: those are cancelled, what was
                # answered is settled (nothing more is sent), the rest released.
                self._advance(info, actor=actor, on_progress=None, simulator_url=None)
                return self._view(info)
            if held:
                engine.ledger.void(holds[-1].batch_id, reason=f"cancelled by {actor.actor}")
            if BatchState.CANCELLED in ALLOWED[current_state(engine.storage, info)]:
                record_state(engine.storage, info, BatchState.CANCELLED, engine.settings.database, actor.actor,
                             by=actor.actor)  # fmt: skip
            settlement.leave_gate(engine.storage, info)
        return self._view(info)

    def retry(self, batch_id: str, *, actor: Actor) -> BatchView:
        """Open a new round for the batch's failed items (reserving only what they need)."""
        info = self.info(batch_id, workspace=_workspace_of(actor))
        self._may_act(actor, info.workspace)
        state = current_state(self._engine.storage, info)
        if state not in _RETRYABLE:
            raise BatchError(f"batch {batch_id} is {state}: only a batch with failed or expired items can be retried")
        self._prepare(info, actor=actor, approve=False)
        return self._view(info)

    def sweep(self, *, stale_after: timedelta | None = None) -> builtins.list[dict[str, Any]]:
        """Release the holds of batches whose runs died (no progress for `stale_after`) and fail them."""
        settings = self._engine.settings
        stale = timedelta(minutes=settings.dispatch.stale_after_minutes) if stale_after is None else stale_after
        return settlement.sweep(self._engine.storage, settings, stale_after=stale, running=self._running)

    def _running(self, batch_id: str) -> str | None:
        """Who runs the batch now: a live lease whose holder is not known to be dead."""
        holder = self._leases.holder(batch_id)
        return holder if holder is not None and not is_dead(holder) else None

    # -- rules ------------------------------------------------------------------------------------
    @staticmethod
    def _may_act(actor: Actor, workspace: str) -> None:
        """A key changes batches only in its own workspace, with scope and role action `batches:write`."""
        if isinstance(actor, Principal) and actor.workspace != workspace:
            raise NotFound(f"no such batch in workspace {actor.workspace}")
        actor.require(workspace, scope="batches:write", action="batches:write", doing="change batches")


def _workspace_of(actor: Actor) -> str | None:
    return actor.workspace if isinstance(actor, Principal) else None


def _progress(on_progress: Callable[[Progress], None] | None) -> Callable[[int, int, int, int], None] | None:
    if on_progress is None:
        return None
    started = time.monotonic()

    def report(succeeded: int, failed: int, total: int, cost_usd_micros: int) -> None:
        on_progress(Progress(succeeded=succeeded, failed=failed, total=total, cost_usd_micros=cost_usd_micros,
                             elapsed_s=time.monotonic() - started))  # fmt: skip

    return report


def _deadline(value: str | float | None) -> float | None:
    return None if value is None else parse_deadline(value, field="deadline")
