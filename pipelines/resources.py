"""The engine as a resource: one interface, a configured implementation and a simulated one for tests.

Assets, sensors and schedules ask for `batchrouter: BatchRouterResource` and call `batchrouter.engine()`.
`ConfiguredBatchRouter` is the installation's engine (config file + environment; secrets through
`dg.EnvVar`); `SimulatedBatchRouter` is an engine over one folder (bucket + ledger) whose providers all
point at the folder's own built-in provider simulator (`simulator.shared`), which runs and sensor ticks share.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from batchrouter.core.config import ProviderConfig, Settings, SimulatorConfig, load_settings
from batchrouter.engine import BatchRouter
from batchrouter.simulator import shared as shared_simulator

# Resource field -> the environment variable the engine reads it from (batchrouter/core/config.py,
# batchrouter/access/vault.py). Each is optional: unset means the engine's documented default
# (development key file, Stripe off, providers on the built-in simulator).
SECRET_ENV = {
    "secret_key": "BATCHROUTER_SECRET_KEY",
    "stripe_api_key": "STRIPE_SECRET_KEY",
    "stripe_webhook_secret": "STRIPE_WEBHOOK_SECRET",
    "link_secret": "BATCHROUTER_LINK_SECRET",
    "openai_api_key": "OPENAI_API_KEY",
    "anthropic_api_key": "ANTHROPIC_API_KEY",
    "openrouter_api_key": "OPENROUTER_API_KEY",
}


class BatchRouterResource(dg.ConfigurableResource, ABC):  # type: ignore[misc]
    """The BatchRouter engine (batchrouter.engine.BatchRouter) the Dagster code calls."""

    @abstractmethod
    def engine(self) -> BatchRouter:
        """The engine, created once per run or tick."""


class ConfiguredBatchRouter(BatchRouterResource):
    """The installation's engine: `config_path`, else `BATCHROUTER_CONFIG`, else the defaults.

    Secrets are resource fields bound to `dg.EnvVar` (see `from_env`), so the UI shows which
    variables a run uses and never their values.
    """

    config_path: str | None = None
    secret_key: str | None = None
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    link_secret: str | None = None
    openai_api_key: str | None = None
    anthropic_api_key: str | None = None
    openrouter_api_key: str | None = None
    _engine: BatchRouter | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, config_path: str | None = None) -> ConfiguredBatchRouter:
        """Bind each secret that is set in the environment to its `dg.EnvVar`.

        Dagster refuses to start a run whose `EnvVar` is unset, and every secret here is optional,
        so only the variables present when the code location loads are bound; their values are read
        by Dagster at launch, not here.
        """
        bound: dict[str, Any] = {field: dg.EnvVar(var) for field, var in SECRET_ENV.items() if os.environ.get(var)}
        return cls(config_path=config_path, **bound)

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[ConfiguredBatchRouter]:
        # The engine reads its secrets from the environment variables its config names; a value bound
        # here (from an EnvVar, or given in code) is what it finds there for this run.
        given = {SECRET_ENV[f]: v for f in SECRET_ENV if (v := getattr(self, f)) is not None}
        before = {var: os.environ.get(var) for var in given}
        os.environ.update(given)
        try:
            self._engine = BatchRouter(load_settings(self.config_path or None))
            yield self
        finally:
            self._engine = None
            for var, value in before.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value

    def engine(self) -> BatchRouter:
        if self._engine is None:  # used outside a run or tick (a direct asset invocation)
            self._engine = BatchRouter(load_settings(self.config_path or None))
        return self._engine


class SimulatedBatchRouter(BatchRouterResource):
    """An engine over `root` (bucket at root/bucket, ledger root/batchrouter.duckdb) and a simulator.

    Every provider is the built-in simulator, without an address: the folder's own shared simulator
    (`simulator.shared`) serves them, so provider batches a run makes are there for the next sensor
    tick; `latency_ms` is its per-request latency.
    """

    root: str
    latency_ms: float = 5.0
    _engine: BatchRouter | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        base = load_settings(None)
        return load_settings(
            None,
            storage={"root": str(Path(self.root) / "bucket")},
            database=str(Path(self.root) / "batchrouter.duckdb"),
            simulator=SimulatorConfig(latency_ms=self.latency_ms),
            providers={name: ProviderConfig(kind="simulator", wire=base.provider(name).wire)
                       for name in base.provider_names()},  # fmt: skip
        )

    def simulator_url(self) -> str:
        """Where this folder's simulator answers (it starts if none runs), to count its requests."""
        settings = self.settings()
        return shared_simulator.url_for(settings.database, settings.simulator)

    def engine(self) -> BatchRouter:
        if self._engine is None:
            self._engine = BatchRouter(self.settings())
        return self._engine
