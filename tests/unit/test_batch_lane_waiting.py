"""The provider-batch sensor's list of waiting batches survives a batch that stops waiting meanwhile.

Found by `benchmarks/lanes.py` (issue 11): a run that ends removes its batch's marker
(`forget_waiting`) between the sensor's listing of the markers and its reading of them; `due` must
skip that batch, not raise.
"""

from __future__ import annotations

import pytest

from batchrouter.batches import batch_lane
from batchrouter.core.config import Settings
from batchrouter.core.storage import Storage


def test_a_waiting_marker_removed_while_the_sensor_reads_the_list_is_skipped(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(settings.storage)
    storage.write_json({"batch_id": "acme-1", "next_poll_at": 0, "polls": 0}, batch_lane.WAITING, "acme-1.json")
    storage.write_json({"batch_id": "acme-2", "next_poll_at": 0, "polls": 0}, batch_lane.WAITING, "acme-2.json")
    listed = storage.list(batch_lane.WAITING)
    batch_lane.forget_waiting(storage, "acme-1")  # its run ended after the listing
    monkeypatch.setattr(storage, "list", lambda *parts: listed)

    assert batch_lane.due(storage, now=1.0) == [("acme-2", 0)]
