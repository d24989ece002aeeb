"""Shared fixtures: an isolated storage root and config per test, never the developer's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrouter.catalog import Catalog, load_catalog
from batchrouter.config import LimitsConfig, Settings, load_settings


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("BATCHROUTER_CONFIG",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BATCHROUTER_STORAGE__ROOT", str(tmp_path / "bucket"))
    monkeypatch.setenv("BATCHROUTER_DATABASE", str(tmp_path / "batchrouter.duckdb"))


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def limits() -> LimitsConfig:
    return LimitsConfig()


@pytest.fixture
def settings() -> Settings:
    return load_settings()
