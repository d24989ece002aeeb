"""The provider-batch timeline: phases read off a clock, the same under a seed, and lines priced at batch prices."""

from __future__ import annotations

import math
import statistics

from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator import provider_batches as pb
from batchrouter.simulator.server import SimulatorState

DAY = 86_400.0


def timeline(**fields: float) -> pb.Timeline:
    values = {"validate": 10.0, "run": 100.0, "finalize": 20.0, "window": DAY, **fields}
    return pb.Timeline(**values)  # type: ignore[arg-type]


def phase_at(t: pb.Timeline, at: float, **options: object) -> pb.Progress:
    return pb.progress(t, 1000.0, 1000.0 + at, lines=10, **options)  # type: ignore[arg-type]


def test_a_batch_moves_through_its_phases_and_answers_lines_evenly() -> None:
    t = timeline()
    assert [phase_at(t, at).phase for at in (0, 9, 10, 59, 110, 129, 130)] == [
        "validating",
        "validating",
        "in_progress",
        "in_progress",
        "finalizing",
        "finalizing",
        "completed",
    ]
    assert [phase_at(t, at).answered for at in (0, 10, 20, 60, 110, 500)] == [0, 0, 1, 5, 10, 10]
    assert phase_at(t, 500).events == {
        "validating": 1000.0,
        "in_progress": 1010.0,
        "finalizing": 1110.0,
        "completed": 1130.0,
    }


def test_a_batch_that_outruns_its_window_expires_with_the_lines_answered_by_then() -> None:
    t = timeline(run=2 * DAY)
    late = phase_at(t, 3 * DAY)
    assert late.phase == "expired" and late.events["expired"] == 1000.0 + DAY
    assert late.answered == math.floor((DAY - 10) * 10 / (2 * DAY))


def test_a_cancel_stops_answering_and_ends_cancelled_after_the_cancel_time() -> None:
    t = timeline()
    options = {"cancel_at": 1000.0 + 40, "cancel_s": 30.0}
    assert phase_at(t, 50, **options).phase == "cancelling"
    ended = phase_at(t, 500, **options)
    assert ended.phase == "cancelled" and ended.answered == 3 and ended.events["cancelled"] == 1070.0
    assert "finalizing" not in ended.events


def test_a_stuck_batch_never_ends_and_stops_answering_where_it_stuck() -> None:
    t = timeline(stuck_in="in_progress", stuck_at=45.0)
    stuck = phase_at(t, 10 * DAY)
    assert stuck.phase == "in_progress" and stuck.answered == 3
    assert phase_at(timeline(stuck_in="validating", stuck_at=0.0), 10 * DAY).phase == "validating"
    assert phase_at(timeline(stuck_in="finalizing", stuck_at=110.0), 10 * DAY).phase == "finalizing"


def test_a_failed_batch_fails_when_validation_ends() -> None:
    t = timeline()
    assert phase_at(t, 5, failed=True).phase == "validating"
    failed = phase_at(t, 11, failed=True)
    assert failed.phase == "failed" and failed.answered == 0


def test_timelines_are_the_same_under_a_seed_and_have_a_long_tail() -> None:
    config = SimulatorConfig(batch_median_s=420, batch_sigma=1.7, seed=3)
    runs = [pb.draw_timeline(config, f"openai:{i}").run for i in range(2000)]
    assert runs == [pb.draw_timeline(config, f"openai:{i}").run for i in range(2000)]
    assert runs != [pb.draw_timeline(config.model_copy(update={"seed": 4}), f"openai:{i}").run for i in range(2000)]
    assert 300 < statistics.median(runs) < 600
    assert sum(r > DAY for r in runs) > 0  # the tail passes a day


def test_a_share_of_batches_gets_stuck_in_the_configured_states() -> None:
    config = SimulatorConfig(batch_stuck_rate=0.25, batch_stuck_states=["in_progress", "finalizing"])
    drawn = [pb.draw_timeline(config, f"k{i}") for i in range(2000)]
    share = sum(t.stuck_in is not None for t in drawn) / len(drawn)
    assert 0.2 < share < 0.3
    assert {t.stuck_in for t in drawn} == {None, "in_progress", "finalizing"}


def test_a_line_is_billed_at_the_catalog_batch_discount() -> None:
    usage = {"input": 1_000_000, "cached": 0, "written": 0, "output": 1_000_000, "reasoning": 0}
    batch, listed = pb.line_price("openai", "gpt-4o-mini", usage)
    assert listed == 750_000  # $0.15 in + $0.60 out per million tokens
    assert batch == 375_000
    assert pb.line_price("openai", "not-a-model", usage) == (0, 0)


def test_a_rejected_line_is_answered_as_online_and_billed_nothing() -> None:
    context = pb.BatchContext(SimulatorState(SimulatorConfig()))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}
    line = pb.answer(context, "openai", "chat", "bad", body)
    assert line.status == 400 and line.body["error"]["param"] == "temperature"
    assert (line.batch_micros, line.list_micros) == (0, 0)
    good = pb.answer(context, "openai", "chat", "ok", {**body, "temperature": 1})
    assert good.status == 200 and good.usage["input"] == good.body["usage"]["prompt_tokens"]
    assert 0 < good.batch_micros <= good.list_micros
