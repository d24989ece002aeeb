"""The engine: one object that owns BatchRouter's settings, storage, money, accounts and catalog.

    engine = BatchRouter(settings)            # or BatchRouter.from_config("batchrouter.toml")
    quote = engine.batches.preview(data, filename="items.jsonl", workspace="acme")
    batch = engine.batches.create(data, filename="items.jsonl", workspace="acme", actor=CLI)
    run = engine.batches.advance(batch.batch_id)

Its services: `batches` (the lifecycle), `credits`, `keys`, `members`, `webhooks`, `reports`, `files`
(uploaded and written files), `openai` (OpenAI's Batch API over `batches`) and `anthropic`
(Anthropic's Message Batches over `batches`). The
faces (the CLI, the API, the Dagster code) hold one engine and call its services; they hold no rule.
"""

from __future__ import annotations

from functools import cached_property

from batchrouter.access.accounts import Accounts
from batchrouter.access.keys import Keys
from batchrouter.access.members import Members
from batchrouter.batches.service import Batches
from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import Settings, load_settings
from batchrouter.core.storage import Storage
from batchrouter.dropin.anthropic import AnthropicBatches
from batchrouter.dropin.openai import OpenAIBatches
from batchrouter.money.credits import Credits
from batchrouter.money.ledger import Ledger
from batchrouter.output.files import Files
from batchrouter.output.reports import Reports
from batchrouter.output.webhooks import Webhooks


class BatchRouter:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.batches = Batches(self)
        self.credits = Credits(self)
        self.keys = Keys(self)
        self.members = Members(self)
        self.webhooks = Webhooks(self)
        self.reports = Reports(self)
        self.files = Files(self)
        self.openai = OpenAIBatches(self)
        self.anthropic = AnthropicBatches(self)

    @classmethod
    def from_config(cls, path: str | None = None) -> BatchRouter:
        """The engine configured by `path`, else `BATCHROUTER_CONFIG`, else the embedded defaults."""
        return cls(load_settings(path))

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings.storage)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.database)

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.settings.database)

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.models)
