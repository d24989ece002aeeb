"""The signed batch summary and `verify_batch_dir` / `main_verify` on a downloaded batch folder."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from batchrouter.access import vault
from batchrouter.batches.lifecycle import submit
from batchrouter.core import control
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import Settings
from batchrouter.core.storage import Storage
from batchrouter.output.summary import (
    ARTIFACTS,
    SummaryError,
    canonical,
    main_verify,
    public_key,
    verify_batch_dir,
    write_summary,
)

MANIFEST = b"item_id,model,prompt\na,gpt-4o-mini,hello\nb,gpt-4o-mini,there\nc,nope,x\nd,gpt-4o-mini,y\n"


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings.storage)


def make_batch(storage: Storage, *, workspace: str = "acme", data: bytes = MANIFEST) -> BatchInfo:
    info = submit(storage, workspace=workspace, source_name="orders.csv", data=data)
    storage.write_parquet(
        pl.DataFrame({"row": [1, 2, 3, 4], "item_id": ["a", "b", "c", "d"], "output_text": ["x", None, None, None]}),
        *info.folder("outputs.parquet"),
    )
    storage.write_parquet(
        pl.DataFrame(
            {
                "item_id": ["a", "b", "c", "d"],
                "status": ["succeeded", "failed", "rejected", "succeeded"],
                "reserve_usd_micros": [1_000, 2_000, 0, 3_000],
                "cost_usd_micros": [400, 0, 0, 1_100],
            }
        ),
        *info.folder("receipts.parquet"),
    )
    storage.write_json({"quote_id": "q1", "batch_id": info.batch_id}, *info.folder("quote.json"))
    return info


@pytest.fixture
def batch(storage: Storage) -> BatchInfo:
    return make_batch(storage)


@pytest.fixture
def downloaded(settings: Settings, storage: Storage, batch: BatchInfo, tmp_path: Path) -> Path:
    """The batch's folder as a customer would download it: summary.json and the artifacts."""
    write_summary(settings, storage, batch)
    folder = tmp_path / "download"
    folder.mkdir()
    for name in (*ARTIFACTS, "summary.json"):
        (folder / name).write_bytes(storage.read_bytes(*batch.folder(name)))
    return folder


def problems(report_folder: Path, **kwargs: Path) -> list[tuple[str, str]]:
    report = verify_batch_dir(report_folder, public_key_path=kwargs.get("key"))
    return [(p.artifact, p.code) for p in report.problems]


def test_written_summary_verifies(downloaded: Path) -> None:
    report = verify_batch_dir(downloaded)
    assert report.ok, report.problems
    assert sorted(report.checked) == sorted(ARTIFACTS)


def test_batch_folder_in_local_storage_verifies_in_place(
    settings: Settings, storage: Storage, batch: BatchInfo
) -> None:
    write_summary(settings, storage, batch)
    assert verify_batch_dir(storage.path(*batch.folder())).ok


def test_summary_records_counts_totals_and_artifact_digests(
    settings: Settings, storage: Storage, batch: BatchInfo
) -> None:
    summary = write_summary(settings, storage, batch)
    assert summary["batch_id"] == batch.batch_id and summary["workspace"] == "acme"
    assert summary["items"] == 4
    assert summary["counts"] == {"succeeded": 2, "failed": 1, "rejected": 1, "pending": 0}
    assert summary["reserve_usd_micros"] == 6_000 and summary["cost_usd_micros"] == 1_500
    for name in ARTIFACTS:
        data = storage.read_bytes(*batch.folder(name))
        assert summary["artifacts"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert storage.read_json(*batch.folder("summary.json")) == summary


def test_summary_is_the_same_bytes_when_written_again(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    write_summary(settings, storage, batch)
    first = storage.read_bytes(*batch.folder("summary.json"))
    write_summary(settings, storage, batch)
    assert storage.read_bytes(*batch.folder("summary.json")) == first


def test_summary_of_a_batch_without_results_is_refused(settings: Settings, storage: Storage) -> None:
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    with pytest.raises(SummaryError, match="outputs.parquet"):
        write_summary(settings, storage, info)


@pytest.mark.parametrize("offset", [0, 100, -1])
def test_one_altered_byte_of_outputs_fails_naming_outputs(downloaded: Path, offset: int) -> None:
    path = downloaded / "outputs.parquet"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert problems(downloaded) == [("outputs.parquet", "sha256_mismatch")]


def test_a_byte_appended_to_quote_json_fails_naming_quote_json(downloaded: Path) -> None:
    with (downloaded / "quote.json").open("ab") as f:
        f.write(b" ")
    assert problems(downloaded) == [("quote.json", "sha256_mismatch")]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d.update(cost_usd_micros=d["cost_usd_micros"] - 1), id="cost"),
        pytest.param(lambda d: d["counts"].update(failed=0), id="counts"),
        pytest.param(lambda d: d.update(workspace="other"), id="workspace"),
        pytest.param(lambda d: d["artifacts"]["receipts.parquet"].update(size=1), id="artifact-size"),
    ],
)
def test_editing_summary_json_fails_naming_summary_json(
    downloaded: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    path = downloaded / "summary.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document, indent=2))
    assert ("summary.json", "bad_signature") in problems(downloaded)


def test_new_digests_in_summary_json_for_an_altered_artifact_still_fail(downloaded: Path) -> None:
    (downloaded / "outputs.parquet").write_bytes(b"forged")
    path = downloaded / "summary.json"
    document = json.loads(path.read_text())
    document["artifacts"]["outputs.parquet"] = {"sha256": hashlib.sha256(b"forged").hexdigest(), "size": 6}
    path.write_text(json.dumps(document))
    assert problems(downloaded) == [("summary.json", "bad_signature")]


def test_reformatting_summary_json_keeps_it_valid(downloaded: Path) -> None:
    path = downloaded / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()), sort_keys=False))
    assert verify_batch_dir(downloaded).ok


def test_missing_artifact_is_reported_by_name(downloaded: Path) -> None:
    (downloaded / "receipts.parquet").unlink()
    assert problems(downloaded) == [("receipts.parquet", "missing")]


def test_summary_naming_a_path_outside_the_folder_is_not_followed(downloaded: Path) -> None:
    path = downloaded / "summary.json"
    document = json.loads(path.read_text())
    document["artifacts"]["../outside"] = {"sha256": "0" * 64, "size": 0}
    path.write_text(json.dumps(document))
    found = problems(downloaded)
    assert ("summary.json", "unknown_artifact") in found
    assert ("summary.json", "bad_signature") in found


def _key_file(folder: Path, pem: str) -> Path:
    path = folder / "key.pem"
    path.write_text(pem)
    return path


def _other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_verifies_with_the_workspace_public_key(settings: Settings, downloaded: Path, tmp_path: Path) -> None:
    key = _key_file(tmp_path, public_key(settings, "acme"))
    assert problems(downloaded, key=key) == []


def test_wrong_public_key_fails_verification(downloaded: Path, tmp_path: Path) -> None:
    key = _key_file(tmp_path, _pem(_other_key()))
    found = problems(downloaded, key=key)
    assert ("summary.json", "bad_signature") in found
    assert ("summary.json", "key_mismatch") in found


def test_another_workspace_key_fails_verification(settings: Settings, downloaded: Path, tmp_path: Path) -> None:
    key = _key_file(tmp_path, public_key(settings, "other"))
    assert ("summary.json", "bad_signature") in problems(downloaded, key=key)


def test_summary_re_signed_with_a_forger_key_fails_against_the_workspace_key(
    settings: Settings, downloaded: Path, tmp_path: Path
) -> None:
    path = downloaded / "summary.json"
    document = json.loads(path.read_text())
    forger = _other_key()
    document["cost_usd_micros"] = 0
    document["public_key_pem"] = _pem(forger)
    document["signature"] = base64.b64encode(forger.sign(canonical(document))).decode()
    path.write_text(json.dumps(document))
    assert verify_batch_dir(downloaded).ok  # self-consistent, which is why --public-key exists
    key = _key_file(tmp_path, public_key(settings, "acme"))
    assert ("summary.json", "bad_signature") in problems(downloaded, key=key)


def test_public_key_is_stable_per_workspace_and_differs_between_workspaces(settings: Settings) -> None:
    acme = public_key(settings, "acme")
    assert acme.startswith("-----BEGIN PUBLIC KEY-----")
    assert public_key(settings, "acme") == acme
    assert public_key(settings, "other") != acme


def test_keys_are_kept_in_the_workspace_signing_keys_table(settings: Settings) -> None:
    pem = public_key(settings, "acme")
    control.stop(settings.database)  # read the file itself: its owner lets go of it first
    with duckdb.connect(settings.database, read_only=True) as con:
        rows = con.execute(
            "SELECT workspace, key_id, private_key_pem, public_key_pem, created_at FROM workspace_signing_keys"
        ).fetchall()
    assert len(rows) == 1
    workspace, key_id, sealed_pem, public_pem, created_at = rows[0]
    assert (workspace, public_pem) == ("acme", pem)
    assert key_id.startswith("ed25519:") and created_at is not None
    assert sealed_pem.startswith("fernet:") and "PRIVATE KEY" not in sealed_pem  # encrypted at rest
    private = serialization.load_pem_private_key(vault.unseal(settings.database, sealed_pem).encode(), password=None)
    assert _pem(private) == pem  # type: ignore[arg-type]


def test_signing_keys_live_beside_the_ledger(settings: Settings) -> None:
    from batchrouter.money.ledger import Ledger

    Ledger(settings.database).grant("acme", 5_000_000, key="g1")
    public_key(settings, "acme")
    assert Ledger(settings.database).balance("acme").available_usd_micros == 5_000_000


# -- main_verify -----------------------------------------------------------------------------------


def test_main_verify_exits_0_for_an_intact_batch(downloaded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_verify([str(downloaded)]) == 0
    assert capsys.readouterr().out.startswith("ok:")


def test_main_verify_exits_0_with_the_right_public_key(
    settings: Settings, downloaded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _key_file(tmp_path, public_key(settings, "acme"))
    assert main_verify([str(downloaded), "--public-key", str(key), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_main_verify_exits_1_and_names_the_altered_artifact(
    downloaded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (downloaded / "receipts.parquet").write_bytes(b"not the receipts")
    assert main_verify([str(downloaded), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [(p["artifact"], p["code"]) for p in report["problems"]] == [("receipts.parquet", "sha256_mismatch")]


def test_main_verify_exits_1_for_a_wrong_public_key(
    downloaded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _key_file(tmp_path, _pem(_other_key()))
    assert main_verify([str(downloaded), "--public-key", str(key)]) == 1
    assert "summary.json: bad_signature" in capsys.readouterr().out


def test_main_verify_exits_2_for_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_verify([str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_main_verify_exits_2_without_summary_json(downloaded: Path) -> None:
    (downloaded / "summary.json").unlink()
    assert main_verify([str(downloaded)]) == 2


def test_main_verify_exits_2_for_unparseable_summary_json(downloaded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (downloaded / "summary.json").write_text("{not json")
    assert main_verify([str(downloaded), "--json"]) == 2
    assert "not readable JSON" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("content", [None, "not a key", "RSA"])
def test_main_verify_exits_2_for_an_unusable_public_key_file(
    downloaded: Path, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "key.pem"
    if content == "RSA":
        from cryptography.hazmat.primitives.asymmetric import rsa

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    elif content is not None:
        path.write_text(content)
    assert main_verify([str(downloaded), "--public-key", str(path)]) == 2


def test_copied_folder_keeps_verifying(downloaded: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(downloaded, tmp_path / "elsewhere")
    assert main_verify([str(copy)]) == 0


def test_concurrent_first_use_creates_one_key_per_workspace(settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: public_key(settings, "race"), range(16)))
    assert len(set(keys)) == 1
    control.stop(settings.database)
    with duckdb.connect(settings.database, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM workspace_signing_keys").fetchone() == (1,)
