"""BatchRouter: manifests in, exact quotes, routes, dispatch and receipts out. Never imports dagster.

The names below are imported on first use (module `__getattr__`), so `import batchrouter` and the
`batchrouter --help` start-up stay light; `from batchrouter import X` works as before.
"""

from __future__ import annotations

import typing as _typing
from importlib import import_module as _import_module

if _typing.TYPE_CHECKING:
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
    from batchrouter.engine import BatchRouter
    from batchrouter.intake.manifest import Manifest, read_manifest
    from batchrouter.pricing.quote import Quote, build_quote

# Where each public name lives (the imports above are the same list, for type checkers).
_HOMES = {
    "batchrouter.batches.lifecycle": ["stage_manifest", "stage_quote", "stage_route", "submit"],
    "batchrouter.core.batch_info": ["BatchInfo", "load_batch"],
    "batchrouter.core.catalog": ["Catalog", "CatalogEntry", "load_catalog"],
    "batchrouter.core.config": ["RoutePolicy", "Settings", "load_settings"],
    "batchrouter.core.errors": [
        "BatchError",
        "BatchRouterError",
        "CatalogError",
        "ConfigError",
        "ManifestError",
        "ProviderError",
        "RateLimitedError",
        "StorageError",
        "TerminalError",
        "TransientError",
    ],
    "batchrouter.core.storage": ["Storage"],
    "batchrouter.engine": ["BatchRouter"],
    "batchrouter.intake.manifest": ["Manifest", "read_manifest"],
    "batchrouter.pricing.quote": ["Quote", "build_quote"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BatchError",
    "BatchInfo",
    "BatchRouter",
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


def __getattr__(name: str) -> object:
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module 'batchrouter' has no attribute {name!r}")
    value = getattr(_import_module(home), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
