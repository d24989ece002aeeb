"""The `batchrouter` command: quote, submit and sample, in-process and as a real process."""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from batchrouter.cli import main

GOOD = b"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,Say this is a test!,100\n2,nope,hi,\n"
ALL_BAD = b"item_id,model,prompt\n1,nope,hi\n2,gpt-4o-mini,\n"
NO_MODEL = b"item_id,prompt\n1,hi\n"


def manifest(tmp_path: Path, data: bytes, name: str = "m.csv") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def storage_root() -> Path:
    return Path(os.environ["BATCHROUTER_STORAGE__ROOT"])


def test_quote_json_prints_the_summary_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["quote", manifest(tmp_path, GOOD), "--workspace", "acme", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in (
        "quote_id",
        "workspace",
        "catalog_version",
        "items",
        "accepted",
        "rejected",
        "reserve_usd_micros",
        "expected_usd_micros",
        "by_route",
        "rejections",
    ):
        assert key in out
    assert (out["workspace"], out["items"], out["accepted"], out["rejected"]) == ("acme", 2, 1, 1)
    # 13 x 0.15 + 100 x 0.60 = 61.95 micro-dollars -> 62 (see test_quote).
    assert out["reserve_usd_micros"] == 62
    assert out["rejections"][0]["code"] == "unknown_model"
    assert out["by_route"][0]["route"] == "openai:gpt-4o-mini"


def test_quote_with_a_deadline_shows_each_routes_lane_its_price_and_the_saving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, GOOD)
    assert main(["quote", path, "--workspace", "acme", "--json", "--deadline", "24h"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deadline_s"] == 86_400
    (lane,) = out["by_lane"]
    assert (lane["route"], lane["lane"], lane["items"]) == ("openai:gpt-4o-mini", "batch", 1)
    assert out["expected_usd_micros"] == lane["expected_usd_micros"] < out["online_expected_usd_micros"]
    assert out["reserve_usd_micros"] == 62  # the reserve is the online price, whatever the lane

    assert main(["quote", path, "--workspace", "acme", "--deadline", "1d"]) == 0
    text = capsys.readouterr().out
    assert "Deadline 1d" in text and "less than all online" in text and "batch" in text


def test_a_deadline_that_is_not_a_duration_is_refused_with_what_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", manifest(tmp_path, GOOD), "--workspace", "acme", "--deadline", "tomorrow"])
    err = capsys.readouterr().err
    assert code != 0
    assert "deadline 'tomorrow' is not a duration" in err and "24h" in err and "Traceback" not in err
    assert not (storage_root() / "batches").exists() or not any((storage_root() / "batches").iterdir())


def test_quote_exits_1_when_every_row_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["quote", manifest(tmp_path, ALL_BAD), "--workspace", "acme", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (out["accepted"], out["rejected"]) == (0, 2)
    assert [r["code"] for r in out["rejections"]] == ["unknown_model", "empty_prompt"]


def test_quote_exits_2_for_a_missing_column_and_quarantines_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["quote", manifest(tmp_path, NO_MODEL, "orders.csv"), "--workspace", "acme"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model" in err
    folder = storage_root() / "quarantine" / "acme"
    kept = sorted(p.name for p in folder.iterdir())
    assert len(kept) == 2
    data_file, report = (folder / kept[0]), (folder / kept[1])
    assert data_file.name.endswith("-orders.csv")
    assert report.name == data_file.name + ".error.txt"
    assert data_file.read_bytes() == NO_MODEL
    text = report.read_text()
    assert "missing required column" in text
    assert "model" in text
    assert str(report) in err


def test_quote_exits_2_for_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["quote", str(tmp_path / "absent.csv"), "--workspace", "acme"])
    assert code == 2
    assert "absent.csv" in capsys.readouterr().err


def test_quote_exits_2_for_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_rows = 0\n")
    code = main(["--config", str(config), "quote", manifest(tmp_path, GOOD), "--workspace", "acme"])
    assert code == 2
    assert "limits.max_rows" in capsys.readouterr().err


def test_quote_uses_the_workspace_policy_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[workspaces.acme.policy]\nallowed_providers = ["openrouter"]\n')
    code = main(["quote", manifest(tmp_path, GOOD), "--workspace", "acme", "--config", str(config), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["route"] for r in out["by_route"]] == ["openrouter:openai/gpt-4o-mini"]


def test_quote_table_mentions_the_routes_and_rejections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = b"item_id,model,prompt\n1,gpt-4o-mini,hi\n2,claude-haiku-4-5,hi\n3,nope,hi\n"
    code = main(["quote", manifest(tmp_path, data), "--workspace", "acme"])
    out = capsys.readouterr().out
    assert code == 0
    assert "openai:gpt-4o-mini" in out
    assert "anthropic:claude-haiku-4-5-20251001" in out
    assert "ROUTE" in out
    assert "nope" in out  # the rejection reason names the unknown model


def test_submit_prints_the_same_batch_id_for_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest(tmp_path, GOOD)
    assert main(["submit", path, "--workspace", "acme", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["submit", path, "--workspace", "acme"]) == 0
    second = capsys.readouterr().out.strip()
    assert first["workspace"] == "acme"
    assert second == first["batch_id"]
    assert (storage_root() / "batches" / second / "batch.json").is_file()


def test_sample_writes_a_manifest_that_quotes_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    assert main(["sample", str(out), "--items", "12", "--seed", "3"]) == 0
    capsys.readouterr()
    assert pl.read_csv(out).height == 12
    assert main(["quote", str(out), "--workspace", "acme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 12


def test_cli_runs_as_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "batchrouter.cli", "quote", manifest(tmp_path, GOOD), "--workspace", "acme", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["accepted"] == 1
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchrouter.cli",
            "quote",
            manifest(tmp_path, NO_MODEL, "x.csv"),
            "--workspace",
            "acme",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert "model" in bad.stderr
    # The child process got the storage root from the environment set by conftest.
    assert any(p.name.endswith("-x.csv") for p in (storage_root() / "quarantine" / "acme").iterdir())


def test_help_loads_none_of_the_engines_heavy_libraries() -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['batchrouter', '--help']\n"
        "try:\n"
        "    runpy.run_module('batchrouter.cli', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert "quote" in done.stdout  # the help was printed, with the command list
    assert loaded & {"polars", "duckdb", "pyarrow", "httpx", "dagster"} == set()


def test_a_run_loads_no_library_that_only_billing_or_serving_the_simulator_needs() -> None:
    """What `batchrouter run` imports leaves out Stripe's SDK, the simulator's server and bpe-openai's init."""
    probe = (
        "import sys\n"
        "import batchrouter.cli.app, batchrouter.engine, batchrouter.batches.service, batchrouter.execution.dispatch\n"
        "from batchrouter.simulator import shared\n"
        "print(sorted(m for m in ('stripe', 'aiohttp.web', 'batchrouter.simulator.server', 'bpe_openai.compat')"
        " if m in sys.modules))\n"
        "from batchrouter.simulator import running_simulator\n"
        "print('batchrouter.simulator.server' in sys.modules, running_simulator.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "[]"
    assert lines[-1] == "True batchrouter.simulator.server"  # asked for, the server's names load


def test_importing_the_package_loads_no_engine_module_until_a_name_is_used() -> None:
    probe = (
        "import sys, batchrouter\n"
        "before = 'polars' in sys.modules\n"
        "from batchrouter import Settings, build_quote\n"
        "print(before, 'polars' in sys.modules, Settings.__name__, build_quote.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "Settings", "build_quote"]


def test_each_lazy_name_comes_from_the_module_the_type_checker_is_told() -> None:
    import ast

    import batchrouter

    tree = ast.parse(Path(batchrouter.__file__).read_text(encoding="utf-8"))
    declared = {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batchrouter.")
        for alias in node.names
    }
    assert declared == batchrouter._HOME_OF
    assert sorted(declared) == sorted(batchrouter.__all__)


def test_config_and_json_are_accepted_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[limits]\nmax_rows = 0\n")  # invalid: proves which file was read
    assert main(["credits", "balance", "--workspace", "acme", "--json", "--config", str(config)]) == 2
    assert "limits.max_rows" in capsys.readouterr().err
    assert main(["credits", "--config", str(config), "balance", "--workspace", "acme"]) == 2
    assert "limits.max_rows" in capsys.readouterr().err
    assert main(["credits", "balance", "--workspace", "acme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["available_usd_micros"] == 0


def test_credits_show_dollars_in_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credits", "grant", "--workspace", "acme", "--usd", "1.5", "--key", "t1", "--memo", "hello"]) == 0
    assert "$1.500000" in capsys.readouterr().out
    assert main(["credits", "balance", "--workspace", "acme"]) == 0
    balance = capsys.readouterr().out
    assert "AVAILABLE" in balance and "$1.500000" in balance
    assert main(["credits", "history", "--workspace", "acme"]) == 0
    history = capsys.readouterr().out
    assert "AMOUNT" in history and "$1.500000" in history and "hello" in history


def test_a_usage_error_exits_2_and_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quote", "m.csv"]) == 2
    assert "--workspace" in capsys.readouterr().err
    assert main(["sql", "SELECT 1", "--json", "--csv"]) == 2
    assert "--csv" in capsys.readouterr().err


def test_simulate_has_one_option_per_simulator_setting() -> None:
    from batchrouter.cli import ops
    from batchrouter.core.config import SimulatorConfig

    options = set(inspect.signature(ops.simulate).parameters) - {"ctx", "port", "host", "config_json", "config"}
    assert options == set(SimulatorConfig.model_fields)


def test_run_progress_shows_rate_eta_cost_and_items_by_status() -> None:
    from rich.console import Console

    from batchrouter.cli.progress import RunProgress, describe

    @dataclass(frozen=True)
    class Report:
        succeeded: int
        failed: int
        total: int
        cost_usd_micros: int
        elapsed_s: float

    screen = io.StringIO()
    with RunProgress(enabled=True, console=Console(file=screen, force_terminal=True, width=160)) as progress:
        progress(Report(succeeded=40, failed=10, total=100, cost_usd_micros=1_234_567, elapsed_s=5.0))
    shown = screen.getvalue()
    assert "50/100" in shown
    assert "10.0 items/s  ETA 0:00:05  cost $1.234567  ok 40  failed 10" in shown
    assert describe(Report(0, 0, 10, 0, 0.0)).startswith("0.0 items/s  ETA -:--:--")


def test_run_progress_is_silent_when_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    from batchrouter.cli.progress import RunProgress

    @dataclass(frozen=True)
    class Report:
        succeeded: int = 1
        failed: int = 0
        total: int = 2
        cost_usd_micros: int = 5
        elapsed_s: float = 1.0

    with RunProgress(enabled=False) as progress:
        progress(Report())
    assert capsys.readouterr() == ("", "")


RUN_KEYS = ("batch_id", "workspace", "status", "state", "items", "succeeded", "failed", "rejected", "pending",
            "reserve_usd_micros", "cost_usd_micros", "retries", "rate_limited", "latency_p50_ms", "latency_p95_ms",
            "by_route", "failures", "outputs", "receipts", "settlement", "webhooks")  # fmt: skip


def test_run_waits_for_credit_then_runs_settles_and_shows_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__LATENCY_MS", "5")
    path = manifest(tmp_path, GOOD)
    assert main(["run", path, "--workspace", "acme", "--json"]) == 1
    short = json.loads(capsys.readouterr().out)
    assert (short["status"], short["missing_usd_micros"]) == ("insufficient_credits", 62)
    assert main(["credits", "grant", "--workspace", "acme", "--usd", "1"]) == 0
    capsys.readouterr()
    assert main(["run", path, "--workspace", "acme", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(key in summary for key in RUN_KEYS)
    assert summary["batch_id"] == short["batch_id"]
    assert (summary["state"], summary["succeeded"], summary["rejected"]) == ("completed", 1, 1)
    assert main(["status", summary["batch_id"]]) == 0
    shown = capsys.readouterr().out
    assert "completed" in shown and "HOLD" in shown and "$" in shown


def test_run_over_the_approval_limit_exits_1_until_approved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__LATENCY_MS", "5")
    config = tmp_path / "c.toml"
    config.write_text('[workspaces.acme]\nauto_approve_max_usd = "0.00001"\n')
    path = manifest(tmp_path, GOOD)
    assert main(["credits", "grant", "--workspace", "acme", "--usd", "1"]) == 0
    capsys.readouterr()
    assert main(["run", path, "--workspace", "acme", "--config", str(config)]) == 1
    waiting = capsys.readouterr().out
    assert "is waiting" in waiting
    batch_id = waiting.split()[1]
    assert main(["approve", batch_id, "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_id"] == batch_id
    assert main(["--config", str(config), "run", path, "--workspace", "acme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "completed"
