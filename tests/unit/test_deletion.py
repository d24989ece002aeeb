"""`batchrouter workspace delete-data W`: W's customer data goes, active batches and the financial
and security records stay (and the report says why), and no other workspace loses anything."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from batchrouter.access.accounts import Accounts
from batchrouter.api import create_app
from batchrouter.cli import main
from batchrouter.core.config import Settings, load_settings
from batchrouter.money.ledger import Ledger

ALL_SCOPES = ["batches:read", "batches:write", "credits:read", "credits:write", "admin"]
WORKSPACES = ("acme", "other")
USD = 1_000_000


def csv(prompt: str) -> bytes:
    return f"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,{prompt},20\n".encode()


@dataclass
class Deleted:
    root: Path
    batches: dict[str, str]  # "<workspace> <kind>" -> batch id
    before: dict[str, bytes]  # relative path -> bytes of every file under the root, before deletion
    after: dict[str, bytes]
    report: dict[str, Any]
    ledger_before: dict[str, list[dict[str, Any]]]
    ledger_after: dict[str, list[dict[str, Any]]]
    audit_before: dict[str, list[dict[str, Any]]]
    audit_after: dict[str, list[dict[str, Any]]]
    ledger_ok_after: bool


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def under(paths: dict[str, bytes], *prefixes: str) -> dict[str, bytes]:
    return {p: b for p, b in paths.items() if p.startswith(prefixes)}


def make_data(settings: Settings, tmp: Path, ws: str) -> dict[str, str]:
    """Every kind of data for workspace `ws`; returns its batch ids by kind."""
    root = Path(settings.storage.root)
    accounts, ledger = Accounts(settings.database), Ledger(settings.database)
    accounts.set_member(ws, f"owner@{ws}.test", "owner", actor="test")
    key, _ = accounts.create_key(ws, name="k", scopes=ALL_SCOPES, created_by=f"owner@{ws}.test", actor="test")
    ledger.grant(ws, 5 * USD, key=f"grant-{ws}")
    headers = {"Authorization": f"Bearer {key}"}
    batches = {}
    with TestClient(create_app(settings)) as client:  # executor "sensor": nothing runs in the background

        def create(name: str, prompt: str) -> str:
            quote = client.post(f"/v1/quotes?filename={name}", content=csv(prompt), headers=headers).json()
            created = client.post("/v1/batches", json={"quote_id": quote["quote_id"]}, headers=headers)
            assert created.json()["state"] == "reserved", created.text
            return str(created.json()["batch_id"])

        # a quote preview, never made a batch
        assert client.post("/v1/quotes?filename=preview.csv", content=csv(f"{ws} preview"),
                           headers=headers).status_code == 201  # fmt: skip
        # a batch cancelled before dispatch: finished, its hold voided
        batches["cancelled"] = create("cancelled.csv", f"{ws} cancel me")
        cancelled = client.post(f"/v1/batches/{batches['cancelled']}/cancel", headers=headers)
        assert cancelled.json()["status"] == "cancelled"
        # a batch holding its reservation (handed to the sensor, which has not run it yet)
        batches["active"] = create("active.csv", f"{ws} keep me")
    # a dropped manifest, and an unusable one in quarantine
    (root / "manifests" / ws).mkdir(parents=True, exist_ok=True)
    (root / "manifests" / ws / "dropped.csv").write_bytes(csv(f"{ws} dropped"))
    (tmp / "broken.csv").write_bytes(b"item_id,prompt\n1,no model column\n")
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["quote", str(tmp / "broken.csv"), "--workspace", ws]) == 2
    # a batch run to the end and settled
    batches["done"] = run(tmp, ws, f"{ws}-done.csv", f"{ws} done")
    return batches


def run(tmp: Path, ws: str, name: str, prompt: str, *options: str) -> str:
    (tmp / name).write_bytes(csv(prompt))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([*options, "run", str(tmp / name), "--workspace", ws, "--json"])
    return str(json.loads(out.getvalue())["batch_id"])


@pytest.fixture(scope="module")
def deleted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deleted]:
    """Workspaces acme and other with every kind of data; then `workspace delete-data acme`."""
    tmp = tmp_path_factory.mktemp("deletion")
    root = tmp / "bucket"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BATCHROUTER_CONFIG", raising=False)
        mp.setenv("BATCHROUTER_STORAGE__ROOT", str(root))
        mp.setenv("BATCHROUTER_DATABASE", str(tmp / "batchrouter.duckdb"))
        settings = load_settings()
        batches = {f"{ws} {kind}": batch for ws in WORKSPACES for kind, batch in make_data(settings, tmp, ws).items()}
        # a batch of acme waiting at the approval gate
        gate = tmp / "gate.toml"
        gate.write_text("[workspaces.acme]\nauto_approve_max_usd = 0\n")
        batches["acme waiting"] = run(tmp, "acme", "waiting.csv", "acme waiting", "--config", str(gate))

        ledger, accounts = Ledger(settings.database), Accounts(settings.database)
        ledger_before = {ws: ledger.history(ws) for ws in WORKSPACES}
        audit_before = {ws: accounts.audit_events(ws) for ws in WORKSPACES}
        before = files(root)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["workspace", "delete-data", "acme", "--json"]) == 0
        yield Deleted(
            root=root,
            batches=batches,
            before=before,
            after=files(root),
            report=json.loads(out.getvalue()),
            ledger_before=ledger_before,
            ledger_after={ws: ledger.history(ws) for ws in WORKSPACES},
            audit_before=audit_before,
            audit_after={ws: accounts.audit_events(ws) for ws in WORKSPACES},
            ledger_ok_after=ledger.verify()["ok"],
        )


def batch_files(d: Deleted, name: str, state: str = "before") -> dict[str, bytes]:
    return under(getattr(d, state), f"batches/{d.batches[name]}/")


def test_the_setup_holds_every_kind_of_data(deleted: Deleted) -> None:
    """Guard for the tests below: each kind of data existed, in the state it is meant to be in."""
    for ws in WORKSPACES:
        for folder in (f"manifests/{ws}/", f"quarantine/{ws}/", f"quotes/{ws}/"):
            assert under(deleted.before, folder), folder
        assert f"batches/{deleted.batches[f'{ws} done']}/receipts.parquet" in deleted.before
    status = {name: json.loads(deleted.before[f"batches/{b}/status.json"])["status"] for name, b in
              deleted.batches.items()}  # fmt: skip
    assert status == {
        "acme cancelled": "cancelled", "acme active": "reserved", "acme done": "completed", "acme waiting":
        "awaiting_approval", "other cancelled": "cancelled", "other active": "reserved", "other done": "completed",
    }  # fmt: skip


def test_delete_data_removes_the_workspaces_dropped_quarantined_and_quoted_files(deleted: Deleted) -> None:
    assert under(deleted.after, "manifests/acme/", "quarantine/acme/", "quotes/acme/") == {}


def test_delete_data_removes_every_finished_batch_of_the_workspace(deleted: Deleted) -> None:
    assert batch_files(deleted, "acme done", "after") == {}
    assert batch_files(deleted, "acme cancelled", "after") == {}


def test_delete_data_keeps_a_batch_holding_a_reservation(deleted: Deleted) -> None:
    assert batch_files(deleted, "acme active", "after") == batch_files(deleted, "acme active")


def test_delete_data_keeps_a_batch_waiting_for_approval(deleted: Deleted) -> None:
    assert batch_files(deleted, "acme waiting", "after") == batch_files(deleted, "acme waiting")
    assert f"awaiting_approval/{deleted.batches['acme waiting']}" in deleted.after


def test_delete_data_reports_each_kept_batch_and_why(deleted: Deleted) -> None:
    kept = {Path(k["what"]).name: k["why"] for k in deleted.report["kept"] if "/batches/" in k["what"]}
    assert set(kept) == {deleted.batches["acme active"], deleted.batches["acme waiting"]}
    assert "active" in kept[deleted.batches["acme active"]]
    assert "awaiting_approval" in kept[deleted.batches["acme waiting"]]


def test_delete_data_reports_that_ledger_and_audit_records_are_kept_and_why(deleted: Deleted) -> None:
    records = {k["what"]: k["why"] for k in deleted.report["kept"] if "/batches/" not in k["what"]}
    assert records == {
        "ledger entries of acme": "financial records (amounts and batch ids only)",
        "audit events of acme": "security records (who changed what, when)",
    }


def test_delete_data_reports_every_folder_it_deleted(deleted: Deleted) -> None:
    root = deleted.root.as_posix()
    expected = {f"{root}/{folder}" for folder in ("manifests/acme", "quarantine/acme", "quotes/acme")} | {
        f"{root}/batches/{deleted.batches[name]}" for name in ("acme done", "acme cancelled")
    }
    assert set(deleted.report["deleted"]) == expected
    gone = set(deleted.before) - set(deleted.after)
    assert all(any(f"{root}/{path}".startswith(f"{folder}/") for folder in expected) for path in gone)


def test_delete_data_leaves_other_workspaces_untouched(deleted: Deleted) -> None:
    batches = (f"batches/{deleted.batches[n]}/" for n in ("other done", "other cancelled", "other active"))
    others = ("manifests/other/", "quarantine/other/", "quotes/other/", *batches)
    assert under(deleted.after, *others) == under(deleted.before, *others)
    assert deleted.ledger_after["other"] == deleted.ledger_before["other"]
    assert deleted.audit_after["other"] == deleted.audit_before["other"]


def test_delete_data_keeps_the_ledger(deleted: Deleted) -> None:
    assert deleted.ledger_after["acme"] == deleted.ledger_before["acme"]
    assert {e["op"] for e in deleted.ledger_after["acme"]} == {"grant", "reserve", "void", "settle"}
    assert deleted.ledger_ok_after


def test_delete_data_keeps_the_audit_trail_and_records_the_deletion(deleted: Deleted) -> None:
    before, after = deleted.audit_before["acme"], deleted.audit_after["acme"]
    assert after[: len(before)] == before
    assert [(e["action"], e["target"]) for e in after[len(before) :]] == [("workspace.data_deleted", "acme")]
    assert json.loads(after[-1]["after_json"]) == {"deleted": 5, "kept": 4}
