"""Batch files other people wrote (../shared/realfiles) quote and run unchanged, and no bill exceeds its quote."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from batchrouter.cli import main
from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import load_settings
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

REALFILES = Path(__file__).resolve().parents[3] / "shared" / "realfiles"
FILES = sorted(p.name for p in REALFILES.glob("*.jsonl")) if REALFILES.is_dir() else []


def lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8-sig").split("\n") if line.strip())


@pytest.fixture
def config(tmp_path: Path) -> str:
    """A workspace that runs items naming a retired model on its successor (the default refuses them)."""
    path = tmp_path / "batchrouter.toml"
    path.write_text('[workspaces.realfiles.policy]\nretired_models = "successor"\n')
    return str(path)


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 14, f"expected the real batch files in {REALFILES}"


@pytest.mark.parametrize("name", FILES)
def test_a_real_file_quotes_with_every_line_accepted(
    name: str, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = REALFILES / name
    code = main(["quote", str(path), "--workspace", "realfiles", "--config", config, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["rejections"] == [], summary["rejections"][:3]
    assert (code, summary["items"], summary["accepted"]) == (0, lines(path), lines(path))
    assert summary["reserve_usd_micros"] >= summary["expected_usd_micros"] > 0


@pytest.mark.parametrize("name", FILES)
def test_by_default_a_line_is_accepted_or_refused_as_retired_naming_the_successor(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = REALFILES / name
    main(["quote", str(path), "--workspace", "realfiles", "--json"])
    summary = json.loads(capsys.readouterr().out)
    catalog = load_catalog()
    for rejection in summary["rejections"]:
        assert (rejection["code"], rejection["field"]) == ("retired_model", "model"), rejection
        assert "retired" in rejection["reason"]
        assert any(f"'{successor}'" in rejection["reason"] for successor in catalog.model_names())


@pytest.mark.parametrize("name", FILES)
def test_a_real_file_runs_and_each_receipt_stays_within_its_reserve(
    name: str, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = REALFILES / name
    assert main(["credits", "grant", "--workspace", "realfiles", "--usd", "500", "--key", "realfiles-grant"]) == 0
    capsys.readouterr()
    code = main(["run", str(path), "--workspace", "realfiles", "--config", config, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert (summary["succeeded"], summary["failed"], summary["rejected"]) == (lines(path), 0, 0)
    receipts = pl.read_parquet(summary["receipts"])
    over = receipts.filter(pl.col("cost_usd_micros") > pl.col("reserve_usd_micros"))
    assert over.height == 0, over.select("item_id", "cost_usd_micros", "reserve_usd_micros").head(5)
    holds = Ledger(load_settings().database).batch_holds(summary["batch_id"])
    assert sum(h.captured_usd_micros for h in holds) == int(receipts["cost_usd_micros"].sum())
    assert sum(h.captured_usd_micros for h in holds) <= sum(h.amount_usd_micros for h in holds)
