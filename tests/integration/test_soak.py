"""The bounded soak: 16 processes reserving, settling and voiding at once through the control service,
while other processes keep both cores busy. Nothing acknowledged is lost, nothing is half-applied."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak_module() -> Any:
    spec = importlib.util.spec_from_file_location("soak_benchmark", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sixteen_processes_under_load_lose_no_acknowledged_operation(tmp_path: Path) -> None:
    soak = _soak_module()
    figures = soak.soak(tmp_path, processes=16, ops=20, burners=2, timeout_s=240)
    assert figures["worker_exit_codes"] == [0], figures
    assert figures["acknowledged"] + figures["refused"] >= 16 * 20, figures  # each round: a reserve or a refusal
    assert figures["refused"] > 0, "the grant is sized so that some reservations are refused"
    assert figures["lost"] == 0, figures
    assert figures["without_postings"] == 0, figures
    assert figures["refusals_with_entries"] == 0, figures
    assert figures["verify_ok"], figures["problems"]
