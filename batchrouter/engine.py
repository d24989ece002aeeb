"""The engine: one object that owns settings, storage, the ledger, accounts and the catalog, with services.

    engine = BatchRouter(settings)            # or BatchRouter.from_config(path_or_None)
    engine.credits.balance("acme")
    engine.keys.create("acme", name="ci", scopes=["batches:read"], created_by="ana@acme.test", actor=CLI)

Everything is created on first use, so a face that needs only one service pays only for it.
(Minimal version from the services branch; the lead's version adds `batches`.)
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from batchrouter.core.config import Settings, load_settings

if TYPE_CHECKING:
    from batchrouter.access.accounts import Accounts
    from batchrouter.access.keys import Keys
    from batchrouter.access.members import Members
    from batchrouter.core.storage import Storage
    from batchrouter.money.credits import Credits
    from batchrouter.money.ledger import Ledger
    from batchrouter.output.reports import Reports
    from batchrouter.output.webhooks import Webhooks
    from batchrouter.pricing.catalog import Catalog


class BatchRouter:
    """BatchRouter's engine; its services are attributes (`credits`, `keys`, `members`, ...)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: str | Path | None = None) -> BatchRouter:
        """The engine of a TOML file (else `BATCHROUTER_CONFIG`, else defaults) with environment overrides."""
        return cls(load_settings(config))

    # -- shared parts ---------------------------------------------------------------------------
    @cached_property
    def storage(self) -> Storage:
        from batchrouter.core.storage import Storage

        return Storage(self.settings.storage)

    @cached_property
    def ledger(self) -> Ledger:
        from batchrouter.money.ledger import Ledger

        return Ledger(self.settings.database)

    @cached_property
    def accounts(self) -> Accounts:
        from batchrouter.access.accounts import Accounts

        return Accounts(self.settings.database)

    @cached_property
    def catalog(self) -> Catalog:
        from batchrouter.pricing.catalog import load_catalog

        return load_catalog(self.settings.models)

    # -- services -------------------------------------------------------------------------------
    @cached_property
    def credits(self) -> Credits:
        from batchrouter.money.credits import Credits

        return Credits(self)

    @cached_property
    def keys(self) -> Keys:
        from batchrouter.access.keys import Keys

        return Keys(self)

    @cached_property
    def members(self) -> Members:
        from batchrouter.access.members import Members

        return Members(self)

    @cached_property
    def webhooks(self) -> Webhooks:
        from batchrouter.output.webhooks import Webhooks

        return Webhooks(self)

    @cached_property
    def reports(self) -> Reports:
        from batchrouter.output.reports import Reports

        return Reports(self)
