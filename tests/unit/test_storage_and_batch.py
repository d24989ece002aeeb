"""Storage layout and batch stages: submit, stage_manifest, stage_quote, stage_route, quarantine."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import polars as pl
import pytest

from batchrouter.batches.lifecycle import (
    load_manifest,
    load_quote,
    load_routed_items,
    stage_manifest,
    stage_quote,
    stage_route,
    submit,
)
from batchrouter.core.batch_info import load_batch
from batchrouter.core.catalog import Catalog
from batchrouter.core.config import Settings
from batchrouter.core.errors import BatchError, ManifestError, StorageError
from batchrouter.core.storage import Storage, route_slug

MANIFEST = (
    b"item_id,model,prompt,max_tokens,team\n"
    b"a,gpt-4o-mini,Say this is a test!,100,x\n"
    b"b,claude-haiku-4-5,Hello,50,y\n"
    b"c,llama-3.1-8b-instruct,Hi,20,z\n"
    b"d,nope,bad model,,x\n"
    b"e,gpt-4o-mini,another,10,y\n"
)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings.storage)


@pytest.fixture
def root(settings: Settings) -> Path:
    return Path(settings.storage.root)


def test_storage_root_is_the_isolated_test_bucket(settings: Settings, tmp_path: Path) -> None:
    assert Path(settings.storage.root) == tmp_path / "bucket"


def test_submit_keeps_the_bytes_and_writes_batch_json(storage: Storage, root: Path) -> None:
    info = submit(storage, workspace="acme", source_name="uploads/orders.csv", data=MANIFEST)
    folder = root / "batches" / info.batch_id
    assert (folder / "source" / "orders.csv").read_bytes() == MANIFEST
    recorded = json.loads((folder / "batch.json").read_text())
    assert recorded["workspace"] == "acme"
    assert recorded["source_name"] == "orders.csv"
    assert recorded["manifest_sha256"] == hashlib.sha256(MANIFEST).hexdigest()
    assert recorded["submitted_at"]
    assert load_batch(storage, info.batch_id) == info


def test_submit_is_idempotent_for_the_same_bytes(storage: Storage, root: Path) -> None:
    first = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    second = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    assert second.batch_id == first.batch_id
    assert second.submitted_at == first.submitted_at
    assert [p.relative_to(root).as_posix() for p in root.rglob("batch.json")] == [
        f"batches/{first.batch_id}/batch.json"
    ]


def test_submit_gives_a_new_batch_for_other_bytes_or_another_workspace(storage: Storage) -> None:
    base = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST).batch_id
    assert submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST + b"\n").batch_id != base
    assert submit(storage, workspace="other", source_name="orders.csv", data=MANIFEST).batch_id != base


def test_submit_rejects_an_invalid_workspace_name(storage: Storage) -> None:
    with pytest.raises(BatchError, match="workspace"):
        submit(storage, workspace="../escape", source_name="orders.csv", data=MANIFEST)


def test_load_batch_of_an_unknown_id_raises_batch_error(storage: Storage) -> None:
    with pytest.raises(BatchError, match="no-such-batch"):
        load_batch(storage, "no-such-batch")


def test_stage_manifest_writes_manifest_parquet(
    storage: Storage, settings: Settings, catalog: Catalog, root: Path
) -> None:
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    manifest = stage_manifest(storage, settings, catalog, info)
    written = pl.read_parquet(root / "batches" / info.batch_id / "manifest.parquet")
    assert written.height == 5
    assert written["item_id"].to_list() == ["a", "b", "c", "d", "e"]
    assert written["reject_code"].to_list() == [None, None, None, "unknown_model", None]
    assert written.equals(manifest.items)


def test_stage_quote_writes_quote_parquet_and_quote_json(
    storage: Storage, settings: Settings, catalog: Catalog, root: Path
) -> None:
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    quote = stage_quote(storage, settings, catalog, info, stage_manifest(storage, settings, catalog, info))
    folder = root / "batches" / info.batch_id
    assert pl.read_parquet(folder / "quote.parquet").equals(quote.items)
    summary = json.loads((folder / "quote.json").read_text())
    assert summary["batch_id"] == info.batch_id
    assert summary["quote_id"] == quote.quote_id
    assert (summary["accepted"], summary["rejected"]) == (4, 1)
    assert summary["reserve_usd_micros"] == quote.summary()["reserve_usd_micros"]
    assert load_quote(storage, info).items.equals(quote.items)


def test_stage_route_partitions_accepted_items_by_primary_route(
    storage: Storage, settings: Settings, catalog: Catalog, root: Path
) -> None:
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    manifest = stage_manifest(storage, settings, catalog, info)
    quote = stage_quote(storage, settings, catalog, info, manifest)
    counts = stage_route(storage, info, manifest, quote)
    assert counts == {
        "openai:gpt-4o-mini": 2,
        "anthropic:claude-haiku-4-5-20251001": 1,
        "selfhosted:meta-llama/Llama-3.1-8B-Instruct": 1,
    }
    folder = root / "batches" / info.batch_id / "routed_items"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"route={route_slug(r)}" for r in counts)
    assert (folder / "route=selfhosted_meta-llama_Llama-3.1-8B-Instruct" / "items.parquet").is_file()
    for route, n in counts.items():
        part = pl.read_parquet(folder / f"route={route_slug(route)}" / "items.parquet")
        assert part.height == n
        assert set(part["route"].to_list()) == {route}
        # Everything dispatch needs travels with the item, including the unknown column as metadata.
        assert part["reserve_usd_micros"].min() >= 0
        assert all(json.loads(m)["team"] for m in part["metadata"].to_list())
    assert sorted(load_routed_items(storage, info)["item_id"].to_list()) == ["a", "b", "c", "e"]


def test_stage_route_replaces_partitions_of_an_earlier_run(
    storage: Storage, settings: Settings, catalog: Catalog, root: Path
) -> None:
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    manifest = stage_manifest(storage, settings, catalog, info)
    quote = stage_quote(storage, settings, catalog, info, manifest)
    stray = root / "batches" / info.batch_id / "routed_items" / "route=stale" / "items.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"old")
    stage_route(storage, info, manifest, quote)
    assert not stray.exists()


def test_many_objects_are_written_and_read_back_at_once_each_in_its_place(storage: Storage) -> None:
    frames = [pl.DataFrame({"n": list(range(i, i + 3)), "name": [f"f{i}"] * 3}) for i in range(40)]
    keys = [("batches", "many", f"{i:03d}.parquet") for i in range(40)]
    urls = storage.write_parquets(list(zip(frames, keys, strict=True)))
    assert urls == [storage.url(*key) for key in keys]
    assert sorted(storage.list("batches", "many")) == [key[-1] for key in keys]
    back = storage.read_parquets(list(reversed(keys)))
    assert [f.to_dicts() for f in back] == [f.to_dicts() for f in reversed(frames)]
    assert storage.read_parquets(keys[:1])[0].equals(frames[0]) and storage.read_parquets([]) == []
    with pytest.raises(StorageError, match="missing.parquet does not exist"):
        storage.read_parquets([*keys[:5], ("batches", "many", "missing.parquet")])


def test_route_slug_makes_a_safe_folder_name() -> None:
    assert route_slug("openrouter:openai/gpt-4o-mini") == "openrouter_openai_gpt-4o-mini"


def test_unusable_manifest_in_stage_manifest_is_quarantined_and_raises(
    storage: Storage, settings: Settings, catalog: Catalog, root: Path
) -> None:
    data = b"item_id,prompt\n1,hi\n"
    info = submit(storage, workspace="acme", source_name="broken.csv", data=data)
    with pytest.raises(ManifestError, match="model"):
        stage_manifest(storage, settings, catalog, info)
    folder = root / "quarantine" / "acme"
    kept = sorted(folder.iterdir())
    assert [p.name.endswith(s) for p, s in zip(kept, ("-broken.csv", "-broken.csv.error.txt"), strict=True)] == [
        True,
        True,
    ]
    assert kept[0].read_bytes() == data
    assert "missing required column" in kept[1].read_text()
    status = json.loads((root / "batches" / info.batch_id / "status.json").read_text())
    assert status["status"] == "unusable_manifest"
    assert not (root / "batches" / info.batch_id / "manifest.parquet").exists()


def test_parquet_manifest_round_trips_through_the_stages(
    storage: Storage, settings: Settings, catalog: Catalog
) -> None:
    frame = pl.DataFrame(
        {
            "item_id": ["p1", "p2"],
            "model": ["gpt-4o-mini", "gpt-4o-mini"],
            "messages": [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Bye"}]],
        }
    )
    buf = io.BytesIO()
    frame.write_parquet(buf)
    info = submit(storage, workspace="acme", source_name="chat.parquet", data=buf.getvalue())
    stage_manifest(storage, settings, catalog, info)
    reloaded = load_manifest(storage, info)
    assert reloaded.format == "parquet"
    quote = stage_quote(storage, settings, catalog, info, reloaded)
    assert stage_route(storage, info, reloaded, quote) == {"openai:gpt-4o-mini": 2}


def test_jsonl_batch_with_an_unrecognised_extension_reloads_after_stage_manifest(
    storage: Storage, settings: Settings, catalog: Catalog
) -> None:
    line = json.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    info = submit(storage, workspace="acme", source_name="requests.json", data=line.encode())
    assert stage_manifest(storage, settings, catalog, info).format == "jsonl"
    reloaded = load_manifest(storage, info)
    assert reloaded.format == "jsonl"
    assert stage_quote(storage, settings, catalog, info, reloaded).accepted.height == 1
