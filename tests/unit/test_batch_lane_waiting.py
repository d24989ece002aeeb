"""The waiting markers: the provider-batch sensor's list, and the lines in flight a quote makes room for.

Found by `benchmarks/lanes.py` (issue 11): a run that ends removes its batch's marker
(`forget_waiting`) between the sensor's listing of the markers and its reading of them; `due` must
skip that batch, not raise. A quote reads the lines other batches have in flight from the markers
alone, not from every waiting batch's provider-batch records.
"""

from __future__ import annotations

import time

import pytest

from batchrouter.batches import batch_lane
from batchrouter.core.batch_info import BatchInfo
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
    # The built-in providers are simulators without a base_url. `BatchLane` gives their clients the
    # address of the deployment's shared simulator; a client made without one must refuse, not aim at
    # https://api.openai.com with the simulator's key (which would never answer that a batch ended).
    with pytest.raises(ConfigError):
        client = batch_client_for("openai", settings.provider("openai"))
        pytest.fail(f"a batch client for the built-in simulator was made, aimed at {client.adapter.base_url}")


def test_lines_in_flight_are_read_from_the_waiting_markers_alone(settings: Settings) -> None:
    # No batch folder behind these markers: the counts come from the markers, one read per waiting batch.
    storage = Storage(settings.storage)
    now = time.time()
    gpt, claude = "openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"
    first = {"batch_id": "acme-1", "next_poll_at": 0, "polls": 0, "in_flight": [[gpt, 40, now + 600],
                                                                                  [claude, 7, now + 60]]}  # fmt: skip
    second = {"batch_id": "acme-2", "next_poll_at": 0, "polls": 0, "in_flight": [[gpt, 5, now + 7200]]}
    storage.write_json(first, batch_lane.WAITING, "acme-1.json")
    storage.write_json(second, batch_lane.WAITING, "acme-2.json")

    assert batch_lane.lines_in_flight(storage, settings, within_s=3600) == {gpt: 40, claude: 7}
    assert batch_lane.lines_in_flight(storage, settings, within_s=4 * 3600) == {gpt: 45, claude: 7}
    assert batch_lane.lines_in_flight(storage, settings, within_s=30) == {}


def test_a_look_that_changes_only_when_to_poll_keeps_the_counts_a_run_wrote(settings: Settings) -> None:
    storage = Storage(settings.storage)
    info = BatchInfo(batch_id="acme-3", workspace="acme", source_name="m.csv", manifest_sha256="0" * 64,
                     submitted_at="2026-12-03T00:00:00+00:00")  # fmt: skip
    hedges = [("openai:gpt-4o-mini", 12, time.time() + 60)]
    batch_lane.mark_waiting(storage, info, 1.0, polls=0, unsent=3, in_flight=hedges)

    batch_lane.mark_waiting(storage, info, 2.0, polls=1)  # the sensor's look: nothing of the run's changes

    marker = storage.read_json(batch_lane.WAITING, "acme-3.json")
    assert (marker["next_poll_at"], marker["polls"], marker["unsent"]) == (2.0, 1, 3)
    assert batch_lane.lines_in_flight(storage, settings, within_s=3600) == {"openai:gpt-4o-mini": 12}
    batch_lane.mark_waiting(storage, info, None)  # it waits no more: nothing of it is in flight
    assert batch_lane.lines_in_flight(storage, settings, within_s=3600) == {}
