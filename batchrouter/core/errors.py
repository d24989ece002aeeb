"""Every error BatchRouter raises on purpose.

    BatchRouterError
    ├── ConfigError            the TOML file or an environment override is wrong
    ├── CatalogError           the model catalog (or a [[models]] override) is inconsistent
    ├── ManifestError          a manifest is unusable as a whole (unreadable, missing column, too big)
    ├── StorageError           the storage root cannot be read or written
    ├── BatchError             a batch is unknown or in a state that forbids the operation
    ├── LedgerError            (ledger) a money operation was refused
    │   ├── InsufficientCredits, IdempotencyConflict, HoldError, InvalidAmount, InvalidKey
    ├── AmountError            (money) an amount is not whole micro-dollars within 0..10^15
    ├── ControlError           (control) the control service refused or failed an operation
    │   └── ServiceUnavailable no control service could be reached or started
    ├── VaultError             (vault) a sealed secret cannot be opened with the keys given
    ├── IdentityError          (identity) a workspace name or email is not valid
    └── ProviderError          a provider call did not give a usable answer
        ├── TransientError     worth retrying: 5xx, 529, timeouts, resets, truncated bodies, stalls
        │   └── RateLimitedError   429, with the provider's Retry-After
        └── TerminalError      retrying cannot help: other 4xx, refusals, malformed requests

Messages say what was wrong, where (file, row, field) and what to do about it.
"""

from __future__ import annotations


class BatchRouterError(Exception):
    """Base of every deliberate BatchRouter error.

    `code` is the stable public code (API bodies, CLI `--json`, receipts), `http_status` what the API
    answers with it, `retryable` whether doing the same thing again later may succeed.
    """

    code: str = "batchrouter_error"
    http_status: int = 400
    retryable: bool = False


class ConfigError(BatchRouterError):
    """The configuration file or an environment override is invalid."""


class CatalogError(BatchRouterError):
    """The model catalog or a model override is inconsistent."""


class ManifestError(BatchRouterError):
    """A manifest cannot be used at all; individual bad rows are rejections, not errors."""

    def __init__(self, source: str, problem: str, fix: str) -> None:
        self.source = source
        self.problem = problem
        self.fix = fix
        self.report: str | None = None  # where the quarantined copy's report is, once it is kept
        super().__init__(f"{source}: {problem}. {fix[:1].upper()}{fix[1:]}")


class StorageError(BatchRouterError):
    """The storage root cannot be read or written."""


class BatchError(BatchRouterError):
    """A batch is unknown, or its state forbids the operation."""

    code = "batch_error"
    http_status = 409


class IllegalTransition(BatchError):
    """A batch was asked to move to a state that may not follow its current one."""

    code = "illegal_transition"


class ProviderError(BatchRouterError):
    """A provider call failed; `code` is stable, `message` keeps the provider's words."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(f"{code}: {message}")


class TransientError(ProviderError):
    """Retrying later may succeed."""


class RateLimitedError(TransientError):
    """The provider said 429; `retry_after_s` is its Retry-After when given."""

    def __init__(
        self, code: str, message: str, *, status: int | None = 429, retry_after_s: float | None = None
    ) -> None:
        super().__init__(code, message, status=status)
        self.retry_after_s = retry_after_s


class TerminalError(ProviderError):
    """Retrying the same request cannot succeed."""


class AwaitingApproval(BatchError):
    """The batch's quote is over the workspace's auto-approval limit and nobody has approved it yet."""

    code = "awaiting_approval"


class NotFound(BatchRouterError):
    """No such thing (or not in the caller's workspace: other workspaces' things are never shown)."""

    code = "not_found"
    http_status = 404


class Forbidden(BatchRouterError):
    """The caller may not do this."""

    code = "forbidden"
    http_status = 403
