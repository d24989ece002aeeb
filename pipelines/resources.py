"""The one resource assets use: BatchRouter's settings, catalog and storage."""

import dagster as dg
from pydantic import PrivateAttr

from batchrouter.catalog import Catalog, load_catalog
from batchrouter.config import Settings, load_settings
from batchrouter.storage import Storage


class BatchRouterResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Loads the configuration once per run: `config_path` or else `BATCHROUTER_CONFIG`."""

    config_path: str | None = None
    _settings: Settings | None = PrivateAttr(default=None)
    _catalog: Catalog | None = PrivateAttr(default=None)
    _storage: Storage | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._settings = load_settings(self.config_path or None)
        self._catalog = load_catalog(self._settings.models)
        self._storage = Storage(self._settings.storage)

    @property
    def settings(self) -> Settings:
        assert self._settings is not None, "resource used outside a run"
        return self._settings

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None, "resource used outside a run"
        return self._catalog

    @property
    def storage(self) -> Storage:
        assert self._storage is not None, "resource used outside a run"
        return self._storage
