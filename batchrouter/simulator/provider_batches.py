"""What both providers' batch APIs share: the accelerated clock, a batch's timeline, its lines and their price.

A provider batch is computed, never run: at creation every line is answered by the online rules
(`server.answer_line`) and a timeline is drawn from a seeded generator (validation, the time to answer
every line, finalizing, perhaps a state it gets stuck in). Reading the batch later asks the clock how
far along the timeline it is, so progress needs no background work and is the same under the same seed.

Timeline, in provider seconds after creation: `validating` until `validate`; lines are answered one
after another, evenly, until `validate + run` (`run` log-normal around `batch_median_s`); `finalizing`
for `finalize`; then done. A batch that would end after the completion window expires at the window
with the lines answered by then. A stuck batch stops moving at `stuck_at` in its state and never ends
on its own (past the window too, as providers' stuck batches do); cancelling it still works. A cancel
stops answering lines at once, spends `batch_cancel_s` cancelling, then ends with the lines answered.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator import server
from batchrouter.simulator.billing import PrefixCache

Phase = Literal["validating", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled", "failed"]
ENDED: frozenset[str] = frozenset({"completed", "expired", "cancelled", "failed"})
_MICROS = Decimal(10**6)


class ProviderClock:
    """Provider time: Unix seconds that run `scale` times faster than the wall from the moment it starts."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._wall = time.time()
        self._start = time.monotonic()

    def now(self) -> float:
        return self._wall + (time.monotonic() - self._start) * self.scale


@dataclass(frozen=True)
class Timeline:
    """When a batch's phases end, in provider seconds after its creation."""

    validate: float
    run: float
    finalize: float
    window: float
    stuck_in: str | None = None
    stuck_at: float = math.inf

    def answered(self, lines: int, cutoff: float) -> int:
        """How many of `lines` are answered once processing has reached `cutoff`."""
        if lines == 0 or cutoff < self.validate:
            return 0
        if self.run <= 0:
            return lines
        return min(lines, max(0, math.floor((cutoff - self.validate) * lines / self.run + 1e-9)))


def draw_timeline(config: SimulatorConfig, key: str) -> Timeline:
    """The timeline of the batch named `key` (`<provider>:<n>`, the provider's n-th batch made), drawn from
    the simulator's seed."""
    rng = random.Random(f"{config.seed}:{key}")
    validate = config.batch_validating_s * rng.uniform(0.5, 1.5)
    run = rng.lognormvariate(math.log(config.batch_median_s), config.batch_sigma) if config.batch_sigma else 0.0
    run = run or config.batch_median_s
    finalize = config.batch_finalizing_s * rng.uniform(0.5, 1.5)
    if rng.random() >= config.batch_stuck_rate:
        return Timeline(validate, run, finalize, config.batch_window_s)
    state = rng.choice(config.batch_stuck_states)
    stuck_at = {"validating": 0.0, "in_progress": validate + run * rng.uniform(0.1, 0.9)}.get(state, validate + run)
    return Timeline(validate, run, finalize, config.batch_window_s, state, stuck_at)


@dataclass(frozen=True)
class Progress:
    """Where a batch is at one provider instant: its phase, when each phase began, lines answered."""

    phase: Phase
    events: dict[str, float]  # phase -> provider time it began (absolute)
    answered: int


def progress(
    timeline: Timeline,
    created: float,
    now: float,
    *,
    lines: int,
    failed: bool = False,
    cancel_at: float | None = None,
    cancel_s: float = 0.0,
) -> Progress:
    """The batch's phase at provider time `now` (every argument in provider seconds)."""
    t = timeline
    planned: list[tuple[float, Phase]] = [(0.0, "validating")]
    if failed:
        if t.stuck_in != "validating":
            planned.append((t.validate, "failed"))
    else:
        end_run, end = t.validate + t.run, t.validate + t.run + t.finalize
        if t.stuck_in != "validating":
            planned.append((min(t.validate, t.window), "in_progress"))
        if t.stuck_in in (None, "finalizing") and end_run < t.window:
            planned.append((end_run, "finalizing"))
        if t.stuck_in is None:
            planned.append((end, "completed") if end <= t.window else (t.window, "expired"))
    cutoff = min(t.stuck_at, t.window)
    if cancel_at is not None:
        at = cancel_at - created
        planned = [p for p in planned if p[0] <= at]
        if planned[-1][1] not in ENDED:
            planned += [(at, "cancelling"), (at + cancel_s, "cancelled")]
            cutoff = min(cutoff, at)
    elapsed = now - created
    seen = [p for p in planned if p[0] <= elapsed] or planned[:1]
    answered = 0 if failed else timeline.answered(lines, min(elapsed, cutoff))
    return Progress(seen[-1][1], {phase: created + at for at, phase in seen}, answered)


@dataclass
class BatchContext:
    """What answering a batch's lines needs: the simulator's limits and the batch's own prompt cache."""

    state: server.SimulatorState
    config: SimulatorConfig = field(init=False)
    cache: PrefixCache = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.state.config
        self.cache = PrefixCache(self.config.prompt_cache_ttl_s)

    def check_cap(self, model: str, cap: int | None, key: str) -> int:
        return self.state.check_cap(model, cap, key)


@dataclass(frozen=True)
class Line:
    """One request of a batch, answered: its status and body, usage and price (batch and list), in micro-USD."""

    custom_id: str
    status: int
    body: dict[str, Any]
    usage: dict[str, int]
    batch_micros: int
    list_micros: int


def _usage(body: dict[str, Any]) -> dict[str, int]:
    """Input, cached, cache-written, output and reasoning tokens of an answer on any wire."""
    usage = body.get("usage") or {}
    if "prompt_tokens" in usage:  # chat completions
        return {
            "input": int(usage["prompt_tokens"]),
            "cached": int(usage["prompt_tokens_details"]["cached_tokens"]),
            "written": 0,
            "output": int(usage["completion_tokens"]),
            "reasoning": int(usage["completion_tokens_details"]["reasoning_tokens"]),
        }
    if "input_tokens_details" in usage:  # responses
        return {
            "input": int(usage["input_tokens"]),
            "cached": int(usage["input_tokens_details"]["cached_tokens"]),
            "written": 0,
            "output": int(usage["output_tokens"]),
            "reasoning": int(usage["output_tokens_details"]["reasoning_tokens"]),
        }
    if "input_tokens" in usage:  # anthropic messages: input_tokens excludes cached and written tokens
        cached, written = int(usage["cache_read_input_tokens"]), int(usage["cache_creation_input_tokens"])
        return {
            "input": int(usage["input_tokens"]) + cached + written,
            "cached": cached,
            "written": written,
            "output": int(usage["output_tokens"]),
            "reasoning": 0,
        }
    return {"input": 0, "cached": 0, "written": 0, "output": 0, "reasoning": 0}


def _prices(provider: str, model: str) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
    """(input, cached input, output) USD per million tokens and the batch discount of `model` at `provider`."""
    from batchrouter.core.catalog import load_catalog

    lowered = model.lower()
    for entry in load_catalog().entries:
        names = {entry.name.lower(), entry.upstream.lower(), *(a.lower() for a in entry.aliases)}
        if entry.provider == provider and lowered in names:
            cached = entry.cached_input_usd_per_mtok
            return (
                entry.input_usd_per_mtok,
                cached or entry.input_usd_per_mtok,
                entry.output_usd_per_mtok,
                (entry.batch_discount),
            )
    return None


_PRICE_CACHE: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal, Decimal] | None] = {}


def line_price(provider: str, model: str, usage: dict[str, int]) -> tuple[int, int]:
    """What a line costs at batch prices and at list prices, in micro-USD (a model outside the catalog: 0).

    Input read from the cache is billed at the cached price; Anthropic cache writes at 1.25x input, as the
    providers publish; the batch price is the list price x (1 - the catalog's batch discount).
    """
    key = (provider, model)
    if key not in _PRICE_CACHE:
        _PRICE_CACHE[key] = _prices(provider, model)
    prices = _PRICE_CACHE[key]
    if prices is None:
        return 0, 0
    price_in, price_cached, price_out, discount = prices
    plain = usage["input"] - usage["cached"] - usage["written"]
    usd = (
        plain * price_in
        + usage["cached"] * price_cached
        + usage["written"] * price_in * Decimal("1.25")
        + usage["output"] * price_out
    ) / _MICROS
    list_micros = int((usd * _MICROS).to_integral_value(rounding=ROUND_HALF_UP))
    batch_micros = int((usd * (1 - discount) * _MICROS).to_integral_value(rounding=ROUND_HALF_UP))
    return batch_micros, list_micros


def answer(context: BatchContext, provider: str, endpoint: str, custom_id: str, body: Any) -> Line:
    """One line answered as the online endpoint answers it, billed at batch prices when it succeeds."""
    status, payload = server.answer_line(context.state, endpoint, body, context)
    usage = _usage(payload) if status == 200 else _usage({})
    model = str(body.get("model", "")) if isinstance(body, dict) else ""
    batch_micros, list_micros = line_price(provider, model, usage) if status == 200 else (0, 0)
    return Line(custom_id, status, payload, usage, batch_micros, list_micros)


def bill(batch_id: str, status: str, lines: list[Line], answered: int) -> dict[str, Any]:
    """What the provider charges for a batch so far: its answered lines that succeeded, at batch prices.

    A simulator figure (no provider returns it on the batch object), for reconciling with the catalog.
    """
    billed = [line for line in lines[:answered] if line.status == 200]
    return {
        "id": batch_id,
        "status": status,
        "requests": len(lines),
        "answered": answered,
        "billed_lines": len(billed),
        "cost_micros": sum(line.batch_micros for line in billed),
        "list_cost_micros": sum(line.list_micros for line in billed),
    }


async def answer_all(
    state: server.SimulatorState, provider: str, endpoint: str, items: list[tuple[str, Any]]
) -> list[Line]:
    """Every `(custom_id, body)` of a new batch answered, in a thread so online requests keep being served."""
    context = BatchContext(state)
    return await asyncio.to_thread(lambda: [answer(context, provider, endpoint, cid, body) for cid, body in items])


def page(
    ids: list[str],
    *,
    limit: str | None,
    after: str | None = None,
    before: str | None = None,
    default: int = 20,
    maximum: int = 100,
) -> tuple[list[str], bool] | str:
    """A page of `ids` (in listing order) after or before a cursor, and whether more remain that way.

    Returns a message naming the bad argument instead when `limit` or a cursor is wrong.
    """
    try:
        size = default if limit is None else int(limit)
    except ValueError:
        return f"Invalid 'limit': expected an integer from 1 to {maximum}, got {limit!r}."
    if not 1 <= size <= maximum:
        return f"Invalid 'limit': expected an integer from 1 to {maximum}, got {size}."
    for name, cursor in (("after", after), ("before", before)):
        if cursor is not None and cursor not in ids:
            return f"Invalid '{name}': no object with id {cursor!r}."
    if before is not None:
        end = ids.index(before)
        start = max(0, end - size)
        return ids[start:end], start > 0
    start = ids.index(after) + 1 if after is not None else 0
    chosen = ids[start : start + size]
    return chosen, start + size < len(ids)
