"""`batchrouter sql` over the reporting views after a real `batchrouter run`, and the money side of `run`.

One small batch is run once for the module (credits granted, a CSV manifest run against the built-in
provider simulator); the view tests read it. Tests that change state work on their own copy.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import duckdb
import pytest

from batchrouter.cli import main
from batchrouter.core import control
from batchrouter.money.ledger import Ledger, usd

USD = 1_000_000
WORKSPACE = "acme"
# Three items on two models and one row rejected (unknown model).
MANIFEST = (
    b"item_id,model,prompt,max_tokens\n"
    b"1,gpt-4o-mini,Say hello in French.,40\n"
    b"2,gpt-4o-mini,Name three colours.,40\n"
    b"3,claude-sonnet-4-5,Write one short sentence.,30\n"
    b"4,not-a-model,hi,10\n"
)


def run_json(*argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A batch run to the end: 1 USD granted, the manifest run, settled."""
    root = tmp_path_factory.mktemp("reporting")
    env = {
        "BATCHROUTER_STORAGE__ROOT": str(root / "bucket"),
        "BATCHROUTER_DATABASE": str(root / "batchrouter.duckdb"),
        "BATCHROUTER_SIMULATOR__LATENCY_MS": "0",
    }
    manifest = root / "orders.csv"
    manifest.write_bytes(MANIFEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BATCHROUTER_CONFIG", raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        assert main(["credits", "grant", "--workspace", WORKSPACE, "--usd", "1", "--key", "seed"]) == 0
        code, summary = run_json("run", str(manifest), "--workspace", WORKSPACE, "--json")
    assert code == 0, summary
    assert (summary["succeeded"], summary["rejected"], summary["pending"]) == (3, 1, 0)
    quote = json.loads((root / "bucket" / "batches" / summary["batch_id"] / "quote.json").read_text())
    return {"root": root, "env": env, "manifest": manifest, "summary": summary, "quote": quote}


@pytest.fixture
def report(finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Point this test's configuration at the finished run."""
    for name, value in finished["env"].items():
        monkeypatch.setenv(name, value)
    return finished


def sql(capsys: pytest.CaptureFixture[str], query: str, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sql", query, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(capsys: pytest.CaptureFixture[str], query: str) -> list[dict[str, Any]]:
    code, out, err = sql(capsys, query, "--json")
    assert code == 0, err
    result: list[dict[str, Any]] = json.loads(out)
    return result


def one(capsys: pytest.CaptureFixture[str], query: str) -> dict[str, Any]:
    (row,) = rows(capsys, query)
    return row


# -- the views -------------------------------------------------------------------------------------------
def test_receipts_view_has_one_receipt_per_manifest_row(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    got = rows(capsys, "SELECT status, count(*) AS n FROM receipts GROUP BY status ORDER BY status")
    assert got == [{"status": "rejected", "n": 1}, {"status": "succeeded", "n": 3}]
    batch = one(capsys, "SELECT DISTINCT batch_id, workspace FROM receipts")
    assert batch == {"batch_id": report["summary"]["batch_id"], "workspace": WORKSPACE}


def test_receipts_cost_equals_the_runs_cost(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cost = one(capsys, "SELECT sum(cost_usd_micros) AS c FROM receipts")["c"]
    assert cost == report["summary"]["cost_usd_micros"] > 0


def test_usage_daily_cost_equals_receipts_cost_equals_ledger_spent(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    usage = one(capsys, "SELECT sum(cost_usd_micros) AS c FROM usage_daily")["c"]
    receipts = one(capsys, "SELECT sum(cost_usd_micros) AS c FROM receipts WHERE status IN ('succeeded', 'failed')")[
        "c"
    ]
    spent = one(capsys, f"SELECT spent_usd_micros AS s FROM balances WHERE workspace = '{WORKSPACE}'")["s"]
    captured = one(capsys, "SELECT captured_usd_micros AS c FROM batches")["c"]
    assert usage == receipts == spent == captured == report["summary"]["cost_usd_micros"]


def test_usage_daily_counts_items_and_tokens_per_model(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    usage = rows(
        capsys, "SELECT model, items, succeeded, input_tokens, output_tokens, tokens FROM usage_daily ORDER BY model"
    )
    receipts = rows(
        capsys,
        "SELECT model, count(*) AS items, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens "
        "FROM receipts WHERE status = 'succeeded' GROUP BY model ORDER BY model",
    )
    assert [u["model"] for u in usage] == ["claude-sonnet-4-5", "gpt-4o-mini"]
    for u, r in zip(usage, receipts, strict=True):
        assert (u["items"], u["succeeded"], u["input_tokens"], u["output_tokens"]) == (
            r["items"],
            r["items"],
            r["input_tokens"],
            r["output_tokens"],
        )
        assert u["tokens"] == u["input_tokens"] + u["output_tokens"]
    assert sum(u["items"] for u in usage) == 3


def test_balances_view_shows_credited_as_available_plus_held_plus_spent(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    b = one(capsys, "SELECT * FROM balances")
    cost = report["summary"]["cost_usd_micros"]
    assert (b["workspace"], b["credited_usd_micros"], b["held_usd_micros"], b["spent_usd_micros"]) == (
        WORKSPACE,
        1 * USD,
        0,
        cost,
    )
    assert b["available_usd_micros"] == 1 * USD - cost
    assert b["credited_usd_micros"] == b["available_usd_micros"] + b["held_usd_micros"] + b["spent_usd_micros"]
    assert b["balanced"] is True


def test_ledger_entries_view_lists_the_grant_the_reservation_and_the_settlement(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    got = rows(capsys, "SELECT op, batch_id, amount_usd_micros FROM ledger_entries ORDER BY created_at")
    batch = report["summary"]["batch_id"]
    assert got == [
        {"op": "grant", "batch_id": None, "amount_usd_micros": 1 * USD},
        {"op": "reserve", "batch_id": batch, "amount_usd_micros": report["quote"]["reserve_usd_micros"]},
        {"op": "settle", "batch_id": batch, "amount_usd_micros": report["summary"]["cost_usd_micros"]},
    ]


def test_every_entry_in_the_postings_view_sums_to_zero(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    got = rows(capsys, "SELECT entry_id, sum(amount_usd_micros) AS total FROM postings GROUP BY entry_id")
    assert len(got) == 3
    assert {r["total"] for r in got} == {0}


def test_batches_view_shows_the_batch_settled_with_its_reservation_and_capture(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    b = one(capsys, "SELECT batch_id, workspace, reserved_usd_micros, captured_usd_micros, hold_status FROM batches")
    assert b == {
        "batch_id": report["summary"]["batch_id"],
        "workspace": WORKSPACE,
        "reserved_usd_micros": report["quote"]["reserve_usd_micros"],
        "captured_usd_micros": report["summary"]["cost_usd_micros"],
        "hold_status": "settled",
    }


def test_quote_accuracy_view_compares_each_models_actual_cost_with_its_quote(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    got = rows(capsys, "SELECT * FROM quote_accuracy ORDER BY model")
    assert [(r["model"], r["items"]) for r in got] == [("claude-sonnet-4-5", 1), ("gpt-4o-mini", 2)]
    assert sum(r["reserved_usd_micros"] for r in got) == report["quote"]["reserve_usd_micros"]
    assert sum(r["expected_usd_micros"] for r in got) == report["quote"]["expected_usd_micros"]
    assert sum(r["actual_usd_micros"] for r in got) == report["summary"]["cost_usd_micros"]
    for r in got:
        assert r["within_reserve"] is True and r["actual_usd_micros"] <= r["reserved_usd_micros"]
        assert r["actual_over_expected"] == pytest.approx(r["actual_usd_micros"] / r["expected_usd_micros"])


def test_platform_revenue_equals_what_the_workspace_spent(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        one(capsys, "SELECT revenue_usd_micros AS r FROM platform_revenue")["r"] == report["summary"]["cost_usd_micros"]
    )


# -- output formats ----------------------------------------------------------------------------------------
def test_sql_json_prints_a_list_of_row_objects(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = sql(capsys, "SELECT op, amount_usd_micros FROM ledger_entries ORDER BY created_at", "--json")
    assert code == 0
    parsed = json.loads(out)
    assert isinstance(parsed, list) and len(parsed) == 3
    assert all(set(r) == {"op", "amount_usd_micros"} for r in parsed)
    assert parsed[0] == {"op": "grant", "amount_usd_micros": 1 * USD}


def test_sql_csv_prints_a_header_and_one_line_per_row(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = sql(capsys, "SELECT workspace, credited_usd_micros FROM balances", "--csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [["workspace", "credited_usd_micros"], [WORKSPACE, str(1 * USD)]]


def test_sql_prints_a_table_by_default(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = sql(capsys, "SELECT op FROM ledger_entries ORDER BY created_at")
    assert code == 0
    assert out.split() == ["op", "-------", "grant", "reserve", "settle"]


# -- refusals ----------------------------------------------------------------------------------------------
REFUSED = {
    "insert": "INSERT INTO ledger.journal SELECT * FROM ledger.journal",
    "delete": "DELETE FROM ledger.journal",
    "update": "UPDATE ledger.wallets SET available_usd_micros = 10**12",
    "create": "CREATE TABLE stolen AS SELECT * FROM ledger.journal",
    "drop": "DROP VIEW balances",
    "copy": "COPY (SELECT * FROM ledger_entries) TO '{out}'",
    "attach": "ATTACH '{out}' AS other",
    "select-then-delete": "SELECT 1; DELETE FROM ledger.journal",
    "explain-analyze-copy": "EXPLAIN ANALYZE COPY (SELECT * FROM ledger_entries) TO '{out}'",
}


@pytest.mark.parametrize("statement", list(REFUSED.values()), ids=list(REFUSED))
def test_sql_refuses_statements_that_are_not_queries_with_exit_code_2(
    statement: str, report: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "written.out"
    ledger = Ledger(report["env"]["BATCHROUTER_DATABASE"])
    before = ledger.verify()
    code, out, err = sql(capsys, statement.format(out=target))
    assert code == 2
    assert "read-only" in err or "SELECT" in err
    assert out == ""
    assert not target.exists()
    assert ledger.verify() == before


def test_sql_answers_explain_of_a_select(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = sql(capsys, "EXPLAIN SELECT * FROM balances")
    assert (code, err) == (0, "")
    assert "physical_plan" in out


# -- the money side of run -------------------------------------------------------------------------------
def test_run_without_enough_credit_exits_1_says_how_much_is_missing_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__LATENCY_MS", "0")
    manifest = tmp_path / "orders.csv"
    manifest.write_bytes(MANIFEST)
    assert main(["credits", "grant", "--workspace", WORKSPACE, "--usd", "0.0001"]) == 0  # 100 micro-dollars
    capsys.readouterr()
    assert main(["run", str(manifest), "--workspace", WORKSPACE]) == 1
    err = capsys.readouterr().err
    (folder,) = (tmp_path / "bucket" / "batches").iterdir()
    reserve = json.loads((folder / "quote.json").read_text())["reserve_usd_micros"]
    assert reserve > 100
    assert "not started" in err and f"{usd(reserve - 100)} missing" in err
    # Nothing was sent: no results, no checkpoint chunks, no hold.
    assert not (folder / "receipts.parquet").exists()
    assert not (folder / "outputs.parquet").exists()
    assert not list(folder.glob("dispatch/**/*.parquet"))
    assert json.loads((folder / "status.json").read_text())["status"] == "insufficient_credits"
    ledger = Ledger(tmp_path / "batchrouter.duckdb")
    assert [r["op"] for r in ledger.history(WORKSPACE)] == ["grant"]
    assert ledger.balance(WORKSPACE).available_usd_micros == 100


def test_run_json_without_credit_reports_the_missing_amount(tmp_path: Path) -> None:
    manifest = tmp_path / "orders.csv"
    manifest.write_bytes(MANIFEST)
    code, out = run_json("run", str(manifest), "--workspace", WORKSPACE, "--json")
    assert code == 1
    (folder,) = (tmp_path / "bucket" / "batches").iterdir()
    reserve = json.loads((folder / "quote.json").read_text())["reserve_usd_micros"]
    assert (out["status"], out["missing_usd_micros"]) == ("insufficient_credits", reserve)
    assert not (folder / "receipts.parquet").exists()


def test_rerunning_a_finished_batch_neither_reserves_nor_settles_again(
    finished: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    control.stop(Path(finished["root"]) / "batchrouter.duckdb")  # a whole file to copy: its owner lets go first
    shutil.copytree(finished["root"], copy)
    monkeypatch.setenv("BATCHROUTER_STORAGE__ROOT", str(copy / "bucket"))
    monkeypatch.setenv("BATCHROUTER_DATABASE", str(copy / "batchrouter.duckdb"))
    ledger = Ledger(copy / "batchrouter.duckdb")
    before = ledger.balance(WORKSPACE)

    code, summary = run_json("run", str(copy / "orders.csv"), "--workspace", WORKSPACE, "--json")
    assert code == 0
    assert summary["batch_id"] == finished["summary"]["batch_id"]
    assert summary["cost_usd_micros"] == finished["summary"]["cost_usd_micros"]
    assert summary["settlement"]["already_settled"] is True
    control.stop(copy / "batchrouter.duckdb")
    with duckdb.connect(str(copy / "batchrouter.duckdb"), read_only=True) as con:
        ops = con.execute(
            "SELECT op, count(*) FROM journal WHERE batch_id LIKE ? GROUP BY op ORDER BY op",
            [summary["batch_id"] + "%"],
        ).fetchall()
    assert ops == [("reserve", 1), ("settle", 1)]
    assert ledger.balance(WORKSPACE) == before
    assert ledger.verify()["ok"]


def test_cost_reconciliation_sets_each_route_s_charge_beside_the_catalog_s(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    got = rows(capsys, "SELECT route, lane, cost_source, items, charged_usd_micros, catalog_usd_micros, "
                       "drift_usd_micros FROM cost_reconciliation ORDER BY route")  # fmt: skip
    assert [r["items"] for r in got] == [1, 2] and {r["lane"] for r in got} == {"online"}
    # Priced by the catalog here (the simulator's providers report no cost): no drift, and the sum is the bill.
    assert all(r["cost_source"] == "catalog" and r["drift_usd_micros"] == 0 for r in got)
    assert sum(r["charged_usd_micros"] for r in got) == report["summary"]["cost_usd_micros"]
    receipts = one(capsys, "SELECT sum(catalog_cost_usd_micros) AS c FROM receipts WHERE status = 'succeeded'")["c"]
    assert receipts == sum(r["catalog_usd_micros"] for r in got)


def test_receipts_written_before_a_column_existed_read_it_as_null(tmp_path: Path) -> None:
    import polars as pl

    from batchrouter.core.config import load_settings
    from batchrouter.output.reporting import connect

    settings = load_settings(database=str(tmp_path / "br.duckdb"), storage={"root": str(tmp_path / "bucket")})
    folder = tmp_path / "bucket" / "batches" / "acme-000000000000000000000001"
    folder.mkdir(parents=True)
    old = pl.DataFrame({"item_id": ["1"], "batch_id": ["acme-000000000000000000000001"], "workspace": ["acme"],
                        "status": ["succeeded"], "cost_usd_micros": [7], "route": ["openai:gpt-4o-mini"]})  # fmt: skip
    old.write_parquet(folder / "receipts.parquet")
    with connect(settings) as con:
        assert con.execute("SELECT catalog_cost_usd_micros, lane, cost_usd_micros FROM receipts").fetchall() == [
            (None, None, 7)
        ]
        assert con.execute("SELECT count(*) FROM cost_reconciliation").fetchone() == (0,)
