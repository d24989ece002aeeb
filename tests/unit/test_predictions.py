"""Lane predictions: priors until enough runs, percentiles of measured runs, censored runs, sizes, idempotency."""

from __future__ import annotations

import math
import multiprocessing
import queue
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from predictions_worker import record_many

from batchrouter.core.config import LanesConfig
from batchrouter.pricing.predictions import (
    LaneSummary,
    Observation,
    Predictions,
    censored_done_share,
    censored_percentile,
    percentile,
    resubmit_share_gain,
    size_bucket,
)

DAY = 86_400.0
HOUR = 3600.0
CONFIG = LanesConfig(percentile=0.95, batch_prior_p95_s=4 * 3600)  # min_observations 20, flex 3x online


@pytest.fixture(autouse=True)
def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The prediction logic in a process alone with its file; the race below goes through the control service.
    monkeypatch.setenv("BATCHROUTER_CONTROL", "direct")


@pytest.fixture
def predictions(tmp_path: Path) -> Predictions:
    return Predictions(tmp_path / "lanes.duckdb")


def completed(predictions: Predictions, durations: list[float], *, provider: str = "openai", lines: int = 100,
              lane: str = "batch", outcome: str = "completed", prefix: str = "b") -> None:  # fmt: skip
    start = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=len(predictions.observations()))
    for i, seconds in enumerate(durations):
        at = start + timedelta(minutes=i)
        predictions.record(provider, lane, lines, seconds, outcome, key=f"{prefix}{i}", observed_at=at)  # type: ignore[arg-type]


def test_the_prior_predicts_until_min_observations_runs_are_measured(predictions: Predictions) -> None:
    assert predictions.completion_s("openai", "batch", 100, config=CONFIG) == 4 * HOUR
    completed(predictions, [60.0] * 19)
    assert predictions.completion_s("openai", "batch", 100, config=CONFIG) == 4 * HOUR
    own = LanesConfig(batch_prior_p95_s=4 * HOUR, batch_prior_p95_s_per_provider={"openai": 2 * HOUR})
    assert predictions.completion_s("openai", "batch", 100, config=own) == 2 * HOUR
    assert predictions.completion_s("anthropic", "batch", 100, config=own) == 4 * HOUR
    assert predictions.completion_s("openai", "batch", 100, config=LanesConfig(min_observations=19)) == 60.0


def test_flex_and_online_priors_start_from_the_online_estimate(predictions: Predictions) -> None:
    online = Predictions.online_s(600, 6000, 2.0)
    assert online == 600 / 100 + 2.0
    assert predictions.completion_s("openai", "flex", 600, config=CONFIG, online_s=online) == 3 * online
    assert predictions.completion_s("openai", "online", 600, config=CONFIG, online_s=online) == online
    with pytest.raises(ValueError, match="online_s"):
        predictions.completion_s("openai", "flex", 600, config=CONFIG)


def test_above_min_observations_the_prediction_is_the_percentile_of_measured_runs(predictions: Predictions) -> None:
    completed(predictions, [60.0 * m for m in range(20, 0, -1)])  # 1..20 minutes, recorded out of order
    assert predictions.completion_s("openai", "batch", 100, config=CONFIG) == 19 * 60.0
    assert predictions.completion_s("openai", "batch", 100, config=LanesConfig(percentile=0.5)) == 10 * 60.0
    assert predictions.completion_s("openai", "batch", 100, config=LanesConfig(percentile=1.0)) == 20 * 60.0
    # Other providers and lanes have their own runs: still the prior.
    assert predictions.completion_s("anthropic", "batch", 100, config=CONFIG) == 4 * HOUR
    assert predictions.completion_s("openai", "flex", 100, config=CONFIG, online_s=5.0) == 15.0


def test_censored_runs_push_the_prediction_up_to_endless(predictions: Predictions) -> None:
    outcome = "stuck"
    minutes = [60.0 * m for m in range(1, 21)]
    completed(predictions, minutes, provider="steady")
    completed(predictions, minutes[1:], provider="sticky")
    completed(predictions, [DAY], provider="sticky", outcome=outcome, prefix="c")  # hedged after a day
    completed(predictions, minutes[2:], provider="stuck")
    completed(predictions, [DAY, DAY], provider="stuck", outcome=outcome, prefix="c")
    steady = predictions.completion_s("steady", "batch", 100, config=CONFIG)
    sticky = predictions.completion_s("sticky", "batch", 100, config=CONFIG)
    assert steady == 19 * 60.0
    assert sticky == 20 * 60.0 > steady  # one censored run in twenty: the slowest measured run
    assert predictions.completion_s("stuck", "batch", 100, config=CONFIG) == math.inf  # more than 5% stuck


def test_a_run_censored_early_says_only_that_it_was_not_done_by_then(predictions: Predictions) -> None:
    # Twenty runs of 1..20 minutes, and two cancelled after 30 s (a user's cancel, an early hedge): they
    # do not make the lane endless, they only leave the risk set after 30 s (Kaplan-Meier).
    completed(predictions, [60.0 * m for m in range(1, 21)])
    completed(predictions, [30.0, 30.0], outcome="cancelled", prefix="c")
    assert predictions.completion_s("openai", "batch", 100, config=CONFIG) == 19 * 60.0
    # Four hedged at 10.5 min, beside twenty runs of 1..20 minutes: done by 10 min, 10 of 24; the ten left
    # at risk then share the rest: done by 12 min 1 - (14/24)(9/10)(8/9) = 0.53, by 20 min all of them.
    completed(predictions, [10.5 * 60.0] * 4, provider="later", outcome="hedged", prefix="h")
    completed(predictions, [60.0 * m for m in range(1, 21)], provider="later")
    assert predictions.completion_s("later", "batch", 100, config=LanesConfig(percentile=0.5)) == 12 * 60.0
    assert predictions.completion_s("later", "batch", 100, config=CONFIG) == 20 * 60.0  # 4 in 24 were not endless


@pytest.mark.parametrize(("outcome", "timing"), [("completed", 60.0), ("stuck", math.inf), ("expired", math.inf),
                         ("hedged", math.inf), ("cancelled", math.inf), ("failed", None)])  # fmt: skip
def test_a_run_tells_its_duration_at_least_its_duration_or_nothing(outcome: str, timing: float | None) -> None:
    run = Observation("openai", "b", "batch", 10, 60.0, outcome, datetime(2026, 12, 1, tzinfo=UTC))
    assert run.timing == timing


def test_failed_runs_tell_no_completion_time(predictions: Predictions) -> None:
    completed(predictions, [60.0] * 19)
    completed(predictions, [1.0] * 5, outcome="failed", prefix="f")
    assert predictions.completion_s("openai", "batch", 100, config=CONFIG) == 4 * HOUR
    completed(predictions, [120.0], prefix="late")
    assert predictions.completion_s("openai", "batch", 100, config=CONFIG) == 60.0  # 20 timed runs now


def test_a_size_bucket_with_too_few_runs_falls_back_to_every_size(predictions: Predictions) -> None:
    assert [size_bucket(n) for n in (1, 999, 1_000, 9_999, 10_000, 10**6)] == ["<1k", "<1k", "<10k", "<10k"] + [
        ">=10k"
    ] * 2
    completed(predictions, [100.0] * 20, lines=500, prefix="small")
    completed(predictions, [1000.0] * 20, lines=5000, prefix="mid")
    completed(predictions, [5000.0] * 5, lines=20_000, prefix="big")
    assert predictions.completion_s("openai", "batch", 700, config=CONFIG) == 100.0
    assert predictions.completion_s("openai", "batch", 9_000, config=CONFIG) == 1000.0
    # 5 runs of >=10k lines: too few, so all 45 runs; their p95 is the 43rd, among the big ones.
    assert predictions.completion_s("openai", "batch", 50_000, config=CONFIG) == 5000.0


def test_recording_the_same_run_twice_counts_it_once(predictions: Predictions) -> None:
    assert predictions.record("openai", "batch", 100, 60.0, "completed", key="batch_1") is True
    assert predictions.record("openai", "batch", 100, 60.0, "completed", key="batch_1") is False
    assert predictions.record("openai", "batch", 100, 90.0, "stuck", key="batch_1") is False  # the end is known
    assert predictions.record("anthropic", "batch", 100, 60.0, "completed", key="batch_1") is True  # its own id
    assert [(o.provider, o.key, o.outcome, o.duration_s) for o in predictions.observations()] == [
        ("openai", "batch_1", "completed", 60.0),
        ("anthropic", "batch_1", "completed", 60.0),
    ]


def test_a_censored_run_seen_again_is_refined_not_counted_again(predictions: Predictions) -> None:
    assert predictions.record("openai", "batch", 100, 2 * HOUR, "stuck", key="batch_9") is True
    assert predictions.record("openai", "batch", 100, HOUR, "stuck", key="batch_9") is False  # knew more already
    assert predictions.record("openai", "batch", 100, 3 * HOUR, "hedged", key="batch_9") is True
    assert predictions.record("openai", "batch", 100, 5 * HOUR, "completed", key="batch_9") is True
    (only,) = predictions.observations("openai", "batch")
    assert (only.outcome, only.duration_s, only.timing) == ("completed", 5 * HOUR, 5 * HOUR)


def test_invalid_observations_are_refused_naming_the_value(predictions: Predictions) -> None:
    for lane, lines, seconds, outcome, key, match in [
        ("sideways", 1, 1.0, "completed", "k", "lane 'sideways'"),
        ("batch", 1, 1.0, "done", "k", "outcome 'done'"),
        ("batch", 0, 1.0, "completed", "k", "lines"),
        ("batch", 1, -1.0, "completed", "k", "duration_s"),
        ("batch", 1, math.nan, "completed", "k", "duration_s"),
        ("batch", 1, 1.0, "completed", "", "key"),
    ]:
        with pytest.raises(ValueError, match=match):
            predictions.record("openai", lane, lines, seconds, outcome, key=key)  # type: ignore[arg-type]
    assert predictions.observations() == []


def test_the_summary_has_a_row_per_provider_lane_and_bucket(predictions: Predictions) -> None:
    completed(predictions, [60.0 * m for m in range(1, 21)], lines=20_000, prefix="big")
    completed(predictions, [10.0, 20.0, 30.0], lines=10, prefix="small")
    completed(predictions, [500.0], lines=10, outcome="stuck", prefix="stuck")
    completed(predictions, [5.0], lines=10, outcome="failed", prefix="failed")
    completed(predictions, [7.0], provider="anthropic", lane="flex", lines=10)
    assert predictions.summary() == [
        LaneSummary("anthropic", "flex", "<1k", 1, 0, 0, 7.0, 7.0, 7.0),
        LaneSummary("openai", "batch", "<1k", 4, 1, 1, 20.0, math.inf, 500.0),
        LaneSummary("openai", "batch", ">=10k", 20, 0, 0, 600.0, 1140.0, 1200.0),
    ]


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([1.0], 0.95) == 1.0
    assert percentile([1.0, math.inf], 0.5) == 1.0
    assert percentile([1.0, math.inf], 0.95) == math.inf
    with pytest.raises(ValueError):
        percentile([], 0.5)


PROCESSES, RUNS = 2, 15


def test_two_processes_recording_at_once_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHROUTER_CONTROL")  # the real path: both through the control service
    path = str(tmp_path / "lanes.duckdb")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=record_many, args=(path, w, RUNS, barrier, results)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = []
    deadline = time.monotonic() + 180
    try:
        while len(outcomes) < PROCESSES:
            try:
                outcomes.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    pytest.fail(f"only {len(outcomes)} of {PROCESSES} workers reported (exit codes {dead})")
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [o["errors"] for o in outcomes] == [[]] * PROCESSES
    assert sum(o["new"] for o in outcomes) == PROCESSES * RUNS + RUNS  # each shared run counted by one worker
    keys = sorted(o.key for o in Predictions(path).observations("openai", "batch"))
    assert keys == sorted(
        [f"w{w}-{r}" for w in range(PROCESSES) for r in range(RUNS)] + [f"shared-{r}" for r in range(RUNS)]
    )


def test_without_censored_runs_the_kaplan_meier_percentile_is_the_nearest_rank() -> None:
    rng = random.Random(7)
    for _ in range(200):
        values = [float(rng.randint(1, 50)) for _ in range(rng.randint(1, 30))]
        p = rng.choice([0.1, 0.5, 0.9, 0.95, 1.0])
        assert censored_percentile([(v, False) for v in values], p) == percentile(values, p)
    assert censored_percentile([(1.0, False), (5.0, True)], 0.95) == math.inf  # never estimated done
    assert censored_percentile([(5.0, True), (9.0, False)], 0.95) == 9.0  # censored before: left the risk set


def test_the_share_done_by_a_time_is_kaplan_meier_and_agrees_with_the_percentile() -> None:
    # Done by t without censoring: the plain share of runs at or below t.
    assert censored_done_share([(1.0, False), (2.0, False), (3.0, False), (4.0, False)], 2.5) == 0.5
    # A run hedged at 2 s leaves the risk set: of the three left, one is done by 3 s, another by 4 s.
    runs = [(1.0, False), (2.0, True), (3.0, False), (5.0, False)]
    assert censored_done_share(runs, 1.5) == 0.25
    assert censored_done_share(runs, 3.0) == pytest.approx(1 - 0.75 * 0.5)
    assert censored_done_share([(1.0, True), (2.0, True)], 10.0) == 0.0  # nothing known done
    rng = random.Random(11)
    for _ in range(200):
        runs = [(float(rng.randint(1, 40)), rng.random() < 0.3) for _ in range(rng.randint(1, 25))]
        p = rng.choice([0.1, 0.5, 0.9, 0.95])
        t = censored_percentile(runs, p)
        if t < math.inf:  # the percentile is the first time by which at least that share is done
            assert censored_done_share(runs, t) >= p - 1e-9 > censored_done_share(runs, t - 0.5)
        else:
            assert censored_done_share(runs, 1e9) < p


def test_the_share_done_by_a_time_is_measured_else_the_prior_decides(predictions: Predictions) -> None:
    config = LanesConfig(percentile=0.9, batch_prior_p95_s=HOUR)
    # Before min_observations runs: the percentile when the prior fits, else nothing is known (0).
    assert predictions.done_share("openai", "batch", 100, HOUR, config=config) == 0.9
    assert predictions.done_share("openai", "batch", 100, HOUR - 1, config=config) == 0.0
    completed(predictions, [60.0 * m for m in range(1, 21)])  # 1..20 minutes
    assert predictions.done_share("openai", "batch", 100, 15 * 60.0, config=config) == 0.75
    assert predictions.done_share("openai", "batch", 100, 60.0 * 30, config=config) == 1.0


def test_a_run_late_past_every_measured_completion_is_worth_resubmitting_a_slow_one_is_not() -> None:
    healthy = [(60.0 * m, False) for m in range(1, 11)]  # done in 1..10 minutes
    # Nothing measured lasted twice its age: a long tail and a stuck run look alike, nothing to tell.
    assert resubmit_share_gain(healthy, 900.0, 80_000.0, 40_000.0) is None
    # Behind the median but not past the measured: of the runs not done by 5 min, all were done by the cancel.
    assert resubmit_share_gain(healthy, 300.0, 80_000.0, 40_000.0) == pytest.approx(0.0)
    assert resubmit_share_gain(healthy, 300.0, 80_000.0, 40_000.0, min_past=2) is None  # only 10 min lasted 2x5
    # Stuck runs measured (hedged, censored at 20 h) among runs done in minutes: past the last completion
    # nothing more ends, so the gain is the share of fresh runs done in time (8 of 10).
    stuck = healthy[:8] + [(72_000.0, True), (72_000.0, True)]
    assert resubmit_share_gain(stuck, 900.0, 80_000.0, 40_000.0, min_past=2) == pytest.approx(0.8)
    assert resubmit_share_gain(stuck, 900.0, 80_000.0, 40_000.0, min_past=3) is None
    # ... with too little time left, it is worth only the share a fresh one has done in that time.
    assert resubmit_share_gain(stuck, 900.0, 80_000.0, 300.0, min_past=2) == pytest.approx(0.5)
    # Early on, the late run is as likely as a fresh one: nothing to gain.
    gain = resubmit_share_gain(stuck, 30.0, 80_000.0, 40_000.0, min_past=2)
    assert gain is not None and gain <= 0.0


def test_runs_cancelled_to_be_sent_again_do_not_make_the_next_run_look_late() -> None:
    # A long tail: most runs done in minutes, some in hours. Runs cancelled at 30 minutes to be sent
    # again end censored just past that age; they say nothing of how runs that old end.
    tail = [(60.0 * m, False) for m in range(1, 21)] + [(3 * 3600.0, False), (5 * 3600.0, False)]
    resubmitted = [(1800.0 + 300.0 + s, True) for s in range(8)]
    assert resubmit_share_gain(tail[:20] + resubmitted, 1800.0, 80_000.0, 40_000.0, min_past=2) is None
    # With the long runs measured, the late run is likely to end: nothing to gain by sending it again.
    gain = resubmit_share_gain(tail + resubmitted, 1800.0, 80_000.0, 40_000.0, min_past=2)
    assert gain is not None and gain <= 0.0


def test_the_resubmit_gain_needs_bet_min_observations_runs_and_as_many_past_twice_the_age(
    predictions: Predictions,
) -> None:
    config = LanesConfig(percentile=0.9, batch_prior_p95_s=HOUR, bet_min_observations=5)

    def gain() -> float | None:
        runs = predictions.observations("openai", "batch")
        return Predictions.resubmit_gain(runs, 100, elapsed_s=900.0, cancel_by_s=DAY, fresh_s=DAY / 2, config=config)

    completed(predictions, [60.0, 120.0, 180.0, 240.0])
    assert gain() is None  # 4 runs
    completed(predictions, [72_000.0] * 4, outcome="cancelled", prefix="stuck")  # hedged at 20 h, never done
    assert gain() is None  # 8 runs, but only 4 of them lasted 1,800 s
    completed(predictions, [72_000.0], outcome="cancelled", prefix="more")
    # Of 9 runs, the 4 done were done in minutes: a fresh run is done in time 4 times in 9, this one never.
    assert gain() == pytest.approx(4 / 9)


def test_the_online_estimate_is_bound_by_the_rate_or_the_requests_in_flight_whichever_is_slower() -> None:
    # 600 items at 6,000 RPM: 6 s by the rate; 2 s each with 256 in flight: 4.7 s; plus the last request.
    assert Predictions.online_s(600, 6000, 2.0, 256) == pytest.approx(6.0 + 2.0)
    # 12 s each (flex of a slow model) with 256 in flight: 28 s by the slots, more than the rate's 6 s.
    assert Predictions.online_s(600, 6000, 12.0, 256) == pytest.approx(600 * 12 / 256 + 12.0)
    assert Predictions.online_s(600, 6000, 12.0) == pytest.approx(6.0 + 12.0)  # unbounded
    # 600 items of 5,000 tokens each at 1 M TPM: 180 s by the tokens, more than the rate's 6 s.
    assert Predictions.online_s(600, 6000, 2.0, 256, tokens=3_000_000, tpm=1_000_000) == pytest.approx(180 + 2.0)
    with pytest.raises(ValueError, match="tpm"):
        Predictions.online_s(1, 60, 1.0, tokens=5, tpm=0)
    with pytest.raises(ValueError, match="concurrency"):
        Predictions.online_s(1, 60, 1.0, 0)


def test_a_bet_reads_the_share_from_fewer_runs_than_a_percentile_needs(predictions: Predictions) -> None:
    config = LanesConfig(percentile=0.9, batch_prior_p95_s=HOUR, min_observations=20, bet_min_observations=5)
    completed(predictions, [60.0, 120.0, 180.0, 240.0])  # four runs: too few even for a bet
    assert predictions.done_share("openai", "batch", 100, 150.0, config=config) == 0.0  # the prior's answer
    completed(predictions, [300.0], prefix="e")  # five: a share, though the percentile still uses the prior
    assert predictions.done_share("openai", "batch", 100, 150.0, config=config) == pytest.approx(0.4)
    assert predictions.completion_s("openai", "batch", 100, config=config) == HOUR
