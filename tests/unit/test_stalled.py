"""The stall rule: a provider batch whose answered count rose and then stopped, judged by its own pace, or
one still validating long after it was sent."""

from __future__ import annotations

import pytest

from batchrouter.batches.batch_lane import Seen, stalled


@pytest.mark.parametrize(
    ("seen", "now_s", "expected"),
    [
        # Took 600 s (from 100 s) to reach 40 lines: stalled once quiet 3 x 600 s, and an hour at least.
        (Seen(40, 700.0), 700.0 + 3599.0, False),
        (Seen(40, 700.0), 700.0 + 3600.0, True),
        # Took 2 h to get there: three times that, not the hour, is the limit.
        (Seen(40, 7300.0), 7300.0 + 3 * 7200.0 - 1, False),
        (Seen(40, 7300.0), 7300.0 + 3 * 7200.0, True),
        # A count never seen rising (counted only at the end) tells nothing.
        (Seen(0, None), 1e9, False),
        (Seen(0, 700.0), 1e9, False),
    ],
)
def test_a_count_is_stalled_after_three_times_its_pace_and_an_hour(seen: Seen, now_s: float, expected: bool) -> None:
    assert stalled(seen, sent_at_s=100.0, now_s=now_s, factor=3.0, min_s=3600.0) is expected


@pytest.mark.parametrize(("now_s", "expected"), [(100.0 + 3599.0, False), (100.0 + 3600.0, True), (1e9, True)])
def test_a_batch_still_validating_an_hour_after_it_was_sent_is_stalled_whatever_its_count(
    now_s: float, expected: bool
) -> None:
    for seen in (Seen(), Seen(0, 700.0)):
        assert stalled(seen, sent_at_s=100.0, now_s=now_s, factor=3.0, min_s=3600.0,
                       validating_for_s=3600.0) is expected  # fmt: skip
