"""Shared fixtures: an isolated storage root and config per test, never the developer's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchrouter.core import control
from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import LimitsConfig, Settings, load_settings
from batchrouter.simulator import shared as shared_simulator


def _stop_services(folder: Path) -> None:
    """Stop the ledger owners and built-in simulators a test started under `folder` (each exits when idle too)."""
    for found in folder.rglob("*.control.lock"):
        control.stop(str(found)[: -len(".control.lock")])
    for found in folder.rglob("*.simulator-*.lock"):
        shared_simulator.stop(str(found).rsplit(".simulator-", 1)[0])


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in ("BATCHROUTER_CONFIG", "BATCHROUTER_CONTROL", "BATCHROUTER_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BATCHROUTER_STORAGE__ROOT", str(tmp_path / "bucket"))
    monkeypatch.setenv("BATCHROUTER_DATABASE", str(tmp_path / "batchrouter.duckdb"))
    # A control service or simulator a test starts exits soon when idle; and is stopped here.
    monkeypatch.setenv("BATCHROUTER_CONTROL_IDLE_S", "20")
    monkeypatch.setenv("BATCHROUTER_SIMULATOR_IDLE_S", "20")
    yield
    _stop_services(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _no_control_service_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Services of module- and session-scoped folders (tests stop their own) stop with the session.
    yield
    _stop_services(tmp_path_factory.getbasetemp())


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def limits() -> LimitsConfig:
    return LimitsConfig()


@pytest.fixture
def settings() -> Settings:
    return load_settings()
