"""BatchRouter: manifests in, exact quotes, routes, dispatch and receipts out. Never imports dagster."""

from batchrouter.batches.lifecycle import stage_manifest, stage_quote, stage_route, submit
from batchrouter.core.batch_info import BatchInfo, load_batch
from batchrouter.core.catalog import Catalog, CatalogEntry, load_catalog
from batchrouter.core.config import RoutePolicy, Settings, load_settings
from batchrouter.core.errors import (
    BatchError,
    BatchRouterError,
    CatalogError,
    ConfigError,
    ManifestError,
    ProviderError,
    RateLimitedError,
    StorageError,
    TerminalError,
    TransientError,
)
from batchrouter.core.storage import Storage
from batchrouter.intake.manifest import Manifest, read_manifest
from batchrouter.pricing.quote import Quote, build_quote

__all__ = [
    "BatchError",
    "BatchInfo",
    "BatchRouterError",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "ConfigError",
    "Manifest",
    "ManifestError",
    "ProviderError",
    "Quote",
    "RateLimitedError",
    "RoutePolicy",
    "Settings",
    "Storage",
    "StorageError",
    "TerminalError",
    "TransientError",
    "build_quote",
    "load_batch",
    "load_catalog",
    "load_settings",
    "read_manifest",
    "stage_manifest",
    "stage_quote",
    "stage_route",
    "submit",
]
