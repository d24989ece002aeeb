"""The one resource assets, sensors and schedules use: BatchRouter's settings, catalog and storage."""

import dagster as dg
from pydantic import PrivateAttr

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import Settings, load_settings
from batchrouter.core.storage import Storage


class BatchRouterResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Loads the configuration on first use: `config_path`, else `BATCHROUTER_CONFIG`, else defaults."""

    config_path: str | None = None
    _settings: Settings | None = PrivateAttr(default=None)
    _catalog: Catalog | None = PrivateAttr(default=None)
    _storage: Storage | None = PrivateAttr(default=None)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path or None)
        return self._settings

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog(self.settings.models)
        return self._catalog

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage(self.settings.storage)
        return self._storage
