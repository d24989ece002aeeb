"""The provider-batch sensor's list of waiting batches survives a batch that stops waiting meanwhile.

Found by `benchmarks/lanes.py` (issue 11): a run that ends removes its batch's marker
(`forget_waiting`) between the sensor's listing of the markers and its reading of them; `due` must
skip that batch, not raise.
"""

from __future__ import annotations

import pytest

from batchrouter.batches import batch_lane
from batchrouter.core.config import Settings
from batchrouter.core.errors import ConfigError
from batchrouter.core.storage import Storage
from batchrouter.execution.provider_batches import batch_client_for


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


def test_a_simulator_provider_without_an_address_has_no_batch_client_rather_than_the_real_provider_s(
    settings: Settings,
) -> None:
    # The built-in providers are simulators without a base_url: only a run that starts the simulator can
    # reach them. `BatchLane.ready` (the sensor's `waiting_due`) passes no simulator URL and expects a
    # ConfigError ("only a run can reach it"), so that it lists the batch; a client aimed at
    # https://api.openai.com with the simulator's key instead never answers that a batch ended.
    with pytest.raises(ConfigError):
        client = batch_client_for("openai", settings.provider("openai"))
        pytest.fail(f"a batch client for the built-in simulator was made, aimed at {client.adapter.base_url}")
