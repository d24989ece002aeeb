"""The webhook outbox in Dagster: the sensor asks for a drain only when a delivery is due; the job drains."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import polars as pl
import pytest

from batchrouter.batches.lifecycle import submit
from batchrouter.core.config import load_settings
from batchrouter.core.storage import Storage
from batchrouter.output.delivery import add_endpoint, enqueue_batch_completed, list_deliveries
from pipelines.jobs import webhook_outbox_job
from pipelines.resources import ConfiguredBatchRouter
from pipelines.sensors import webhook_outbox_sensor

pytestmark = pytest.mark.dagster


@pytest.fixture
def receiver_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("BATCHROUTER_DELIVERY__ALLOW_PRIVATE_ENDPOINTS", "true")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def tick() -> dg.SensorResult | dg.SkipReason:
    with dg.DagsterInstance.ephemeral() as instance:
        resources = {"batchrouter": ConfiguredBatchRouter()}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = webhook_outbox_sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def test_sensor_skips_when_nothing_is_due_and_the_job_drains_what_is(receiver_url: str) -> None:
    settings = load_settings()
    storage = Storage(settings.storage)
    assert isinstance(tick(), dg.SkipReason)
    add_endpoint(settings, "acme", receiver_url)
    info = submit(storage, workspace="acme", source_name="a.csv", data=b"item_id,model,prompt\na,m,p\n")
    storage.write_parquet(pl.DataFrame({"item_id": ["a"], "output_text": ["hi"]}), *info.folder("outputs.parquet"))
    storage.write_parquet(
        pl.DataFrame({"item_id": ["a"], "status": ["succeeded"], "reserve_usd_micros": [9], "cost_usd_micros": [4]}),
        *info.folder("receipts.parquet"),
    )
    storage.write_json({"quote_id": "q1"}, *info.folder("quote.json"))
    enqueue_batch_completed(settings, storage, info)
    result = tick()
    assert isinstance(result, dg.SensorResult) and len(result.run_requests or []) == 1
    assert webhook_outbox_job.execute_in_process(resources={"batchrouter": ConfiguredBatchRouter()}).success
    assert [d.state for d in list_deliveries(settings)] == ["delivered"]
    assert isinstance(tick(), dg.SkipReason)
