"""How long a lane takes: measured completion times per provider, lane and size, else a prior.

Every provider batch (and flex or online run) that ends is recorded once, under a key the caller
chooses (the provider batch id): its provider, lane, lines, how long it ran on the provider's clock and
how it ended. `completion_s` predicts a new run at `LanesConfig.percentile` of the runs like it:

- like it: same provider and lane, in the same size bucket (`<1k`, `<10k`, `>=10k` lines); when the
  bucket has fewer than `min_observations`, every size of that provider and lane; when those are
  fewer too, the prior (`LanesConfig.batch_prior_s(provider)` for batches, `flex_slowdown` times the
  online estimate for flex, the online estimate for online).
- censored runs (expired, stuck, hedged, cancelled) only say the run takes *at least* that long:
  the share of runs done by a time is the Kaplan-Meier estimate, in which a run censored at t counts
  as not done up to t and as unknown after. A provider whose batches often stick past every completed
  run is predicted +inf (never within a deadline) when more than 1 - percentile of its runs stuck;
  a run cancelled after a minute says only that it was not done in a minute. (Counting every
  censored run as endless made a lane's own hedges, which cancel slow batches, rule the lane out.)
- failed runs (the provider refused the batch) say nothing about how long a run takes: kept for the
  summary, left out of predictions.

Percentiles are nearest-rank (the smallest value with at least that share of runs at or below it),
the only definition that stays meaningful with +inf among the values; without censored runs the
Kaplan-Meier percentile is exactly that. Predictions are provider
seconds, without `margin_s`: the caller adds the margin and converts with `LanesConfig.wall_s`.

The table lives in the control-plane database, so every write goes through the control service
(`core.control`, as `batches.leases` does); reads return the rows and the arithmetic runs in the
caller, where the config is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

import duckdb

from batchrouter.core.config import LANES, Lane, LanesConfig
from batchrouter.core.control import served
from batchrouter.core.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS lane_observations (
    provider VARCHAR NOT NULL, observation_key VARCHAR NOT NULL, lane VARCHAR NOT NULL, lines BIGINT NOT NULL,
    duration_s DOUBLE NOT NULL, outcome VARCHAR NOT NULL, observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, observation_key)
);
"""

Outcome = Literal["completed", "expired", "stuck", "hedged", "cancelled", "failed"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
# The run took at least its duration: we stopped watching before it ended (or it never would).
CENSORED: frozenset[str] = frozenset({"expired", "stuck", "hedged", "cancelled"})
# The run says nothing about completion times.
UNTIMED: frozenset[str] = frozenset({"failed"})
Bucket = Literal["<1k", "<10k", ">=10k"]
BUCKETS: tuple[Bucket, ...] = get_args(Bucket)
MAX_KEY_LENGTH = 200


def size_bucket(lines: int) -> Bucket:
    """The size class a run of `lines` items is compared within."""
    return "<1k" if lines < 1_000 else "<10k" if lines < 10_000 else ">=10k"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile `p` (0 < p <= 1) of `values`, +inf allowed among them; needs one value."""
    if not values:
        raise ValueError("a percentile needs at least one value")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered) - 1e-9) - 1)]


def censored_percentile(runs: Sequence[tuple[float, bool]], p: float) -> float:
    """Kaplan-Meier percentile `p` of `runs` (duration, censored): the first completion time by which at
    least that share of runs is estimated done; +inf when the estimate never gets there. Needs one run."""
    if not runs:
        raise ValueError("a percentile needs at least one value")
    at_risk, undone = len(runs), 1.0
    ordered = sorted(runs)  # at one time, completions (False) before censored runs (True)
    i = 0
    while i < len(ordered):
        t = ordered[i][0]
        done = censored = 0
        while i < len(ordered) and ordered[i][0] == t:
            censored += ordered[i][1]
            done += not ordered[i][1]
            i += 1
        if done:
            undone *= 1 - done / at_risk
            if 1 - undone >= p - 1e-9:
                return t
        at_risk -= done + censored
    return math.inf


def censored_done_share(runs: Sequence[tuple[float, bool]], t: float) -> float:
    """Kaplan-Meier share of `runs` (duration, censored) estimated done by time `t`. Needs one run."""
    if not runs:
        raise ValueError("a share needs at least one run")
    at_risk, undone = len(runs), 1.0
    for duration, censored in sorted(runs):
        if duration > t:
            break
        if not censored:
            undone *= 1 - 1 / at_risk
        at_risk -= 1
    return 1 - undone


def resubmit_share_gain(
    runs: Sequence[tuple[float, bool]], elapsed_s: float, cancel_by_s: float, fresh_s: float, *, min_past: int = 1
) -> float | None:
    """Kaplan-Meier share of `runs` done within `fresh_s` (a fresh run), less the share of those not done by
    `elapsed_s` that were done by `cancel_by_s` (the late run, had it been left to run).

    None (nothing to tell) unless at least `min_past` runs lasted twice `elapsed_s` or longer (done then,
    or still running when they ended): a run is judged late only against runs measured well past its
    age. Without them a long tail looks like a stuck run, and a run cancelled to be sent again ends
    censored just past its age, so counting those would let each resubmission justify the next of
    that age.
    With them, a run late past every measured completion is given no chance of ending."""
    if sum(1 for duration, _ in runs if duration >= 2 * elapsed_s) < min_past:
        return None
    by_now = censored_done_share(runs, elapsed_s)
    late = 0.0 if by_now >= 1 - 1e-12 else (censored_done_share(runs, cancel_by_s) - by_now) / (1 - by_now)
    return censored_done_share(runs, fresh_s) - max(late, 0.0)


@dataclass(frozen=True)
class Observation:
    """One run of a lane as recorded."""

    provider: str
    key: str
    lane: str
    lines: int
    duration_s: float
    outcome: str
    observed_at: datetime

    @property
    def timing(self) -> float | None:
        """What the run says about completion time: its duration, +inf when censored, None when failed."""
        if self.outcome in UNTIMED:
            return None
        return math.inf if self.outcome in CENSORED else self.duration_s


@dataclass(frozen=True)
class LaneSummary:
    """Measured runs of one provider, lane and size bucket (`batchrouter status`, reports).

    `count` runs tell a completion time (completed and censored; `censored` of them are); `failed`
    runs do not. p50, p95 are nearest-rank with censored runs as +inf (None without a timed run);
    `max_s` is the longest duration seen, censored or not.
    """

    provider: str
    lane: str
    bucket: str
    count: int
    censored: int
    failed: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None


class Predictions:
    """Lane completion times: recorded once per run, predicted at the configured percentile."""

    def __init__(self, database_path: str | Path) -> None:
        self.path = str(database_path)
        self.db = Database(self.path, schema=SCHEMA)

    @served()
    def record(
        self,
        provider: str,
        lane: Lane,
        lines: int,
        duration_s: float,
        outcome: Outcome,
        *,
        key: str,
        observed_at: datetime | None = None,
    ) -> bool:
        """Record one run of `lane` on `provider`; True when it was new or told more than before.

        Idempotent by (`provider`, `key`): the same run recorded again counts once. A censored run
        seen again with an end (completed, failed) or a longer duration is refined in place, so a batch
        recorded as stuck and later found finished counts as finished; anything else keeps the first.
        """
        _check(provider, lane, lines, duration_s, outcome, key)
        at = observed_at or datetime.now(UTC)

        def work(con: duckdb.DuckDBPyConnection) -> bool:
            row = con.execute(
                "SELECT outcome, duration_s FROM lane_observations WHERE provider = ? AND observation_key = ?",
                [provider, key],
            ).fetchone()
            if row is None:
                con.execute(
                    "INSERT INTO lane_observations VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [provider, key, lane, lines, duration_s, outcome, at],
                )
                return True
            if row[0] not in CENSORED or (outcome in CENSORED and duration_s <= row[1]):
                return False
            con.execute(
                "UPDATE lane_observations SET lane = ?, lines = ?, duration_s = ?, outcome = ?, observed_at = ? "
                "WHERE provider = ? AND observation_key = ?",
                [lane, lines, duration_s, outcome, at, provider, key],
            )
            return True

        return self.db.transaction(work)

    @served(read_only=True)
    def observations(self, provider: str | None = None, lane: str | None = None) -> list[Observation]:
        """The recorded runs, of one provider and lane when given, oldest first."""
        with self.db.connect() as con:
            rows = con.execute(
                "SELECT provider, observation_key, lane, lines, duration_s, outcome, observed_at "
                "FROM lane_observations WHERE (? IS NULL OR provider = ?) AND (? IS NULL OR lane = ?) "
                "ORDER BY observed_at, provider, observation_key",
                [provider, provider, lane, lane],
            ).fetchall()
        return [Observation(r[0], r[1], r[2], int(r[3]), float(r[4]), r[5], r[6]) for r in rows]

    def completion_s(
        self, provider: str, lane: Lane, lines: int, *, config: LanesConfig, online_s: float | None = None
    ) -> float:
        """Predicted provider seconds until a run of `lines` items on `provider`'s `lane` has ended.

        `online_s`: the online estimate for these items (`online_s()`), which the flex and online priors
        start from; needed for those lanes until enough runs are measured. +inf when too many runs
        like this one were censored.
        """
        if lane not in LANES:
            raise ValueError(f"lane {lane!r} is not one of {', '.join(LANES)}")
        measured = predict(self.observations(provider, lane), lines, config=config)
        if measured is not None:
            return measured
        if lane == "batch":
            return config.batch_prior_s(provider)
        if online_s is None:
            raise ValueError(f"the {lane} lane's prior starts from the online estimate: pass online_s")
        return online_s * (config.flex_slowdown if lane == "flex" else 1.0)

    def done_share(self, provider: str, lane: Lane, lines: int, by_s: float, *, config: LanesConfig) -> float:
        """The share of runs like this one (`lines` items on `provider`'s `lane`) done within `by_s`
        provider seconds: Kaplan-Meier over the measured runs (of its size bucket once it has
        `min_observations`, else of every size once they have `bet_min_observations`); before that,
        the configured percentile when the prior fits in `by_s`, else 0 (nothing known, nothing bet)."""
        share = predict_share(self.observations(provider, lane), lines, by_s, config=config,
                              minimum=config.bet_min_observations)  # fmt: skip
        if share is not None:
            return share
        prior = config.batch_prior_s(provider) if lane == "batch" else math.inf
        return config.percentile if prior <= by_s else 0.0

    @staticmethod
    def resubmit_gain(
        measured: list[Observation],
        lines: int,
        *,
        elapsed_s: float,
        cancel_by_s: float,
        fresh_s: float,
        config: LanesConfig,
    ) -> float | None:
        """How much likelier a fresh run of `lines` items is to be done within `fresh_s` than a run not done
        after `elapsed_s` is to be done by `cancel_by_s` (both after its own start), from `measured` (one
        provider's runs of the lane, `observations()`) by `resubmit_share_gain`; None: too few runs like it
        (`bet_min_observations`), or too few of them lasting twice the run's age, to tell."""
        runs = _like(measured, lines, config=config, minimum=config.bet_min_observations)
        if runs is None:
            return None
        return resubmit_share_gain(runs, elapsed_s, cancel_by_s, fresh_s, min_past=config.bet_min_observations)

    @staticmethod
    def online_s(
        items: int,
        rpm: float,
        latency_s: float,
        concurrency: int | None = None,
        *,
        tokens: int = 0,
        tpm: float | None = None,
    ) -> float:
        """Seconds for the online lane to answer `items` at `rpm` requests a minute, each taking `latency_s`,
        at most `concurrency` in flight at once (None: unbounded), and `tokens` in all (`lanes.rate_tokens`)
        at `tpm` tokens a minute (None: unbounded): the slowest of the three limits, plus the last
        request's latency."""
        if rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        if concurrency is not None and concurrency <= 0:
            raise ValueError(f"concurrency must be positive, got {concurrency}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm must be positive, got {tpm}")
        paced = items / (rpm / 60.0)
        metered = tokens / (tpm / 60.0) if tpm else 0.0
        slots = items * latency_s / concurrency if concurrency else 0.0
        return max(paced, metered, slots) + latency_s

    def summary(self) -> list[LaneSummary]:
        """One row per provider, lane and size bucket with runs, in that order."""
        groups: dict[tuple[str, str, Bucket], list[Observation]] = {}
        for found in self.observations():
            groups.setdefault((found.provider, found.lane, size_bucket(found.lines)), []).append(found)
        order = {name: i for i, name in enumerate(BUCKETS)}
        return [
            _summarise(provider, lane, bucket, runs)
            for (provider, lane, bucket), runs in sorted(groups.items(), key=lambda g: (g[0][:2], order[g[0][2]]))
        ]


def predict(runs: Iterable[Observation], lines: int, *, config: LanesConfig) -> float | None:
    """The percentile of `runs` like a run of `lines` (its size bucket, else all sizes); None: too few."""
    values = _like(runs, lines, config=config)
    return None if values is None else censored_percentile(values, config.percentile)


def predict_share(
    runs: Iterable[Observation], lines: int, by_s: float, *, config: LanesConfig, minimum: int | None = None
) -> float | None:
    """The share of `runs` like a run of `lines` done within `by_s`; None: too few runs measured."""
    values = _like(runs, lines, config=config, minimum=minimum)
    return None if values is None else censored_done_share(values, by_s)


def _like(
    runs: Iterable[Observation], lines: int, *, config: LanesConfig, minimum: int | None = None
) -> list[tuple[float, bool]] | None:
    """(duration, censored) of the timed runs like a run of `lines`: its size bucket when that has
    `min_observations`, else every size when those have `minimum` (default `min_observations`);
    None when too few."""
    timed = [(size_bucket(r.lines), (r.duration_s, r.outcome in CENSORED)) for r in runs if r.outcome not in UNTIMED]
    bucket = size_bucket(lines)
    in_bucket = [t for b, t in timed if b == bucket]
    if len(in_bucket) >= config.min_observations:
        return in_bucket
    if len(timed) >= (config.min_observations if minimum is None else minimum):
        return [t for _, t in timed]
    return None


def _summarise(provider: str, lane: str, bucket: str, runs: list[Observation]) -> LaneSummary:
    timed = [t for r in runs if (t := r.timing) is not None]
    return LaneSummary(
        provider=provider,
        lane=lane,
        bucket=bucket,
        count=len(timed),
        censored=sum(1 for r in runs if r.outcome in CENSORED),
        failed=sum(1 for r in runs if r.outcome in UNTIMED),
        p50_s=percentile(timed, 0.5) if timed else None,
        p95_s=percentile(timed, 0.95) if timed else None,
        max_s=max(r.duration_s for r in runs),
    )


def _check(provider: str, lane: str, lines: int, duration_s: float, outcome: str, key: str) -> None:
    if not provider:
        raise ValueError("an observation needs a provider")
    if lane not in LANES:
        raise ValueError(f"lane {lane!r} is not one of {', '.join(LANES)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
        raise ValueError(f"lines must be a whole number of at least 1, got {lines!r}")
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or not 0 <= duration_s < math.inf:
        raise ValueError(f"duration_s must be a finite number of seconds, not negative, got {duration_s!r}")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"an observation key is 1 to {MAX_KEY_LENGTH} characters (the provider batch id), got {key!r}")
