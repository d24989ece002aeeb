"""A batch's states and the transitions between them: the one place that says what may follow what.

    submitted ──> quoted ──> awaiting_approval ──> reserved ──> dispatching ──> completed
        │            │  └──> insufficient_credits ──┘  │            │      ├──> partially_failed
        └─> unusable_manifest                          │            │      ├──> failed
                                                       │            └──> waiting_on_provider ──> expired
        (any state before a final one) ──> cancelled   └──> failed (its run died; the sweeper released the hold)

A final state with unfinished work (`partially_failed`, `failed`, `expired`) may go back to `quoted`
or `reserved`: running the batch again opens a new reservation round for just those items. `completed`,
`cancelled` and `unusable_manifest` are the end.

The state is persisted in the batch's `status.json` and each change of state is audited. Writing a
state that may not follow the current one raises `IllegalTransition`, so no code path can skip a
step (say, dispatch without a reservation) or revive a cancelled batch.
"""

from __future__ import annotations

from enum import StrEnum

from batchrouter.core.errors import IllegalTransition


class BatchState(StrEnum):
    SUBMITTED = "submitted"
    UNUSABLE_MANIFEST = "unusable_manifest"
    QUOTED = "quoted"
    AWAITING_APPROVAL = "awaiting_approval"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    RESERVED = "reserved"
    DISPATCHING = "dispatching"
    WAITING_ON_PROVIDER = "waiting_on_provider"
    COMPLETED = "completed"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Nothing runs in this state until someone acts (re-runs, approves, adds credit)."""
        return self in FINAL

    @property
    def terminal(self) -> bool:
        """No transition leaves this state."""
        return not ALLOWED[self]


S = BatchState
FINAL = frozenset({S.COMPLETED, S.PARTIALLY_FAILED, S.FAILED, S.EXPIRED, S.CANCELLED, S.UNUSABLE_MANIFEST})
_RETRY = frozenset(
    {S.QUOTED, S.AWAITING_APPROVAL, S.INSUFFICIENT_CREDITS, S.RESERVED, S.CANCELLED}
)  # a new round for the items still without an answer

ALLOWED: dict[BatchState, frozenset[BatchState]] = {
    S.SUBMITTED: frozenset({S.QUOTED, S.UNUSABLE_MANIFEST, S.CANCELLED}),
    S.UNUSABLE_MANIFEST: frozenset(),
    S.QUOTED: frozenset({S.QUOTED, S.AWAITING_APPROVAL, S.INSUFFICIENT_CREDITS, S.RESERVED, S.CANCELLED}),
    S.AWAITING_APPROVAL: frozenset({S.QUOTED, S.AWAITING_APPROVAL, S.INSUFFICIENT_CREDITS, S.RESERVED, S.CANCELLED}),
    S.INSUFFICIENT_CREDITS: frozenset(
        {S.QUOTED, S.AWAITING_APPROVAL, S.INSUFFICIENT_CREDITS, S.RESERVED, S.CANCELLED}
    ),  # fmt: skip
    S.RESERVED: frozenset({S.RESERVED, S.DISPATCHING, S.WAITING_ON_PROVIDER, S.CANCELLED, S.FAILED}),
    S.DISPATCHING: frozenset(
        {S.DISPATCHING, S.WAITING_ON_PROVIDER, S.COMPLETED, S.PARTIALLY_FAILED, S.FAILED, S.CANCELLED, S.RESERVED}
    ),  # fmt: skip
    S.WAITING_ON_PROVIDER: frozenset(
        {S.WAITING_ON_PROVIDER, S.DISPATCHING, S.COMPLETED, S.PARTIALLY_FAILED, S.FAILED, S.EXPIRED, S.CANCELLED}
    ),  # fmt: skip
    S.COMPLETED: frozenset(),
    S.PARTIALLY_FAILED: _RETRY,
    S.FAILED: _RETRY,
    S.EXPIRED: _RETRY,
    S.CANCELLED: frozenset(),
}


def check_transition(batch_id: str, current: BatchState, target: BatchState) -> None:
    """Raise `IllegalTransition` unless `target` may follow `current`."""
    if target not in ALLOWED[current]:
        allowed = ", ".join(sorted(ALLOWED[current])) or "none: it is the end of the batch"
        raise IllegalTransition(
            f"batch {batch_id} is {current} and cannot become {target}; from {current} it can become: {allowed}"
        )


def outcome(*, succeeded: int, failed: int, pending: int, cancelled: bool, rejected: int = 0) -> BatchState:
    """The final state of a batch whose receipts say this (after settlement).

    Rows refused at intake or by the quote (`rejected`) are reported with their reasons, not retried:
    they make a batch `failed` only when nothing else came out of it.
    """
    if cancelled:
        return S.CANCELLED
    if pending or (failed and succeeded):
        return S.PARTIALLY_FAILED
    if failed or (rejected and not succeeded):
        return S.FAILED
    return S.COMPLETED
