"""The whole flow on an S3 storage root: moto's S3 server on loopback stands in for the bucket."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from assets.batch import batch
from batchrouter import cli
from batchrouter.core.batch_info import load_batch
from batchrouter.core.config import load_settings
from batchrouter.core.storage import Storage
from batchrouter.money.ledger import Ledger
from pipelines.partitions import batches
from pipelines.resources import ConfiguredBatchRouter
from pipelines.sensors import manifest_sensor

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.integration

WS = "acme"
PREFIX = "prefix"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BATCH_ASSETS = [batch]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class S3Root:
    endpoint: str
    bucket: str
    database: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **AWS,
            "BATCHROUTER_STORAGE__ROOT": f"s3://{self.bucket}/{PREFIX}",
            "BATCHROUTER_STORAGE__ENDPOINT_URL": self.endpoint,
            "BATCHROUTER_DATABASE": self.database,
            "BATCHROUTER_SIMULATOR__LATENCY_MS": "5",
        }

    @property
    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}")["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}", Body=data)

    def keys(self, under: str) -> list[str]:
        found = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{PREFIX}/{under}")
        return sorted(o["Key"].removeprefix(f"{PREFIX}/") for o in found.get("Contents", []))


def _new_root(endpoint: str, bucket: str, database: Path) -> S3Root:
    root = S3Root(endpoint, bucket, str(database))
    root.client.create_bucket(Bucket=bucket)
    return root


def manifest_csv(n: int, tag: str) -> bytes:
    frame = pl.DataFrame(
        {
            "item_id": [f"{tag}-{i}" for i in range(n)],
            "model": ["gpt-4o-mini"] * n,
            "prompt": [f"Summarise {tag} note {i} in one line." for i in range(n)],
            "max_tokens": [64] * n,
        }
    )
    return frame.write_csv().encode()


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


@dataclass
class Ran:
    root: S3Root
    summary: dict[str, Any]
    batch_id: str


@pytest.fixture(scope="module")
def ran(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """One `batchrouter run` on the S3 root, shared by the tests that read its results."""
    tmp = tmp_path_factory.mktemp("s3run")
    root = _new_root(endpoint, "batchrouter-run", tmp / "ledger.duckdb")
    path = tmp / "orders.csv"
    path.write_bytes(manifest_csv(5, "order"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in root.env.items():
            mp.setenv(key, value)
        code, _ = _cli("credits", "grant", "--workspace", WS, "--usd", "1", "--key", "s3-test")
        assert code == 0
        code, out = _cli("run", str(path), "--workspace", WS, "--json")
        assert code == 0, out
    summary = json.loads(out)
    return Ran(root, summary, summary["batch_id"])


@pytest.fixture
def on_ran_root(ran: Ran, monkeypatch: pytest.MonkeyPatch) -> Ran:
    for key, value in ran.root.env.items():
        monkeypatch.setenv(key, value)
    return ran


@pytest.fixture
def fresh_root(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> S3Root:
    bucket = "fresh-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    root = _new_root(endpoint, bucket, tmp_path / "ledger.duckdb")
    for key, value in root.env.items():
        monkeypatch.setenv(key, value)
    return root


def test_run_on_an_s3_root_writes_outputs_and_receipts_into_the_bucket(on_ran_root: Ran) -> None:
    root, batch_id = on_ran_root.root, on_ran_root.batch_id
    prefix = f"s3://{root.bucket}/{PREFIX}/batches/{batch_id}"

    assert on_ran_root.summary["outputs"] == f"{prefix}/outputs.parquet"
    assert on_ran_root.summary["receipts"] == f"{prefix}/receipts.parquet"
    outputs = pl.read_parquet(io.BytesIO(root.get(f"batches/{batch_id}/outputs.parquet")))
    receipts = pl.read_parquet(io.BytesIO(root.get(f"batches/{batch_id}/receipts.parquet")))
    assert outputs["item_id"].to_list() == [f"order-{i}" for i in range(5)]
    assert outputs["output_text"].null_count() == 0
    assert receipts["status"].to_list() == ["succeeded"] * 5
    assert on_ran_root.summary["settlement"]["captured_usd_micros"] == receipts["cost_usd_micros"].sum() > 0
    assert f"batches/{batch_id}/settlement.json" in root.keys(f"batches/{batch_id}/")


def test_sql_over_receipts_on_s3_sums_to_the_ledgers_spent(on_ran_root: Ran) -> None:
    code, out = _cli("sql", "select sum(cost_usd_micros) as total, count(*) as n from receipts", "--json")

    assert code == 0
    (row,) = json.loads(out)
    spent = Ledger(load_settings().database).balance(WS).spent_usd_micros
    assert (row["total"], row["n"]) == (spent, 5)
    receipts = pl.read_parquet(io.BytesIO(on_ran_root.root.get(f"batches/{on_ran_root.batch_id}/receipts.parquet")))
    assert spent == receipts["cost_usd_micros"].sum() > 0


def test_a_presigned_url_downloads_the_exact_receipts_bytes_with_a_plain_http_get(on_ran_root: Ran) -> None:
    storage = Storage(load_settings().storage)
    info = load_batch(storage, on_ran_root.batch_id)

    url = storage.presign(*info.folder("receipts.parquet"), expires_s=300)

    assert url is not None and url.startswith(f"{on_ran_root.root.endpoint}/")
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    assert body == on_ran_root.root.get(f"batches/{info.batch_id}/receipts.parquet")
    assert pl.read_parquet(io.BytesIO(body)).height == 5


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    resources = {"batchrouter": ConfiguredBatchRouter()}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = manifest_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_manifest_sensor_sees_a_manifest_put_into_the_bucket_and_its_run_succeeds(fresh_root: S3Root) -> None:
    Ledger(fresh_root.database).grant(WS, 1_000_000, key="s3-sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        empty = _tick(instance, None)
        assert not empty.run_requests
        fresh_root.put(f"manifests/{WS}/dropped.csv", manifest_csv(3, "drop"))

        found = _tick(instance, empty.cursor)
        (request,) = found.run_requests or []
        assert request.run_key == request.partition_key
        assert not _tick(instance, found.cursor).run_requests
        instance.add_dynamic_partitions(batches.name, [request.run_key])
        result = dg.materialize(
            BATCH_ASSETS,
            instance=instance,
            partition_key=request.partition_key,
            resources={"batchrouter": ConfiguredBatchRouter()},
        )

    assert result.success
    batch_id = request.run_key
    receipts = pl.read_parquet(io.BytesIO(fresh_root.get(f"batches/{batch_id}/receipts.parquet")))
    assert receipts["status"].to_list() == ["succeeded"] * 3
    assert json.loads(fresh_root.get(f"batches/{batch_id}/batch.json"))["source_key"] == f"manifests/{WS}/dropped.csv"
    assert Ledger(fresh_root.database).balance(WS).spent_usd_micros == receipts["cost_usd_micros"].sum()


def test_an_unusable_manifest_put_into_the_bucket_is_moved_to_quarantine(fresh_root: S3Root) -> None:
    data = b"item_id,prompt\n1,hello\n"  # no model column
    fresh_root.put(f"manifests/{WS}/broken.csv", data)
    with dg.DagsterInstance.ephemeral() as instance:
        (request,) = _tick(instance, None).run_requests or []
        instance.add_dynamic_partitions(batches.name, [request.run_key])
        result = dg.materialize(
            BATCH_ASSETS,
            instance=instance,
            partition_key=request.partition_key,
            resources={"batchrouter": ConfiguredBatchRouter()},
            raise_on_error=False,
        )

    assert not result.success
    assert fresh_root.keys("manifests/") == []
    copy, report = fresh_root.keys(f"quarantine/{WS}/")
    assert copy.endswith("-broken.csv") and report == f"{copy}.error.txt"
    assert fresh_root.get(copy) == data
    assert b"model" in fresh_root.get(report)
