"""Every error BatchRouter raises on purpose, each with a stable public code.

Each class declares `code` (the stable public code: API error bodies, CLI `--json`, receipts),
`http_status` (what the API answers with it) and `retryable` (whether doing the same thing again
later may succeed). Faces map errors by these attributes, never by class name. A code marked
"(shares)" is another class's too: a client sees one meaning, the class says where it arose. "also X":
the class is an X too (a face may catch the generic refusal). The README's "Errors" table lists them.

    class                                      code                         HTTP
    BatchRouterError                           batchrouter_error            400
    ├── InvalidRequest                         invalid_request              422
    │   ├── UnreadableRequest                  invalid_request (shares)     400
    │   ├── PayloadTooLarge                    payload_too_large            413
    │   ├── UnsupportedEncoding                unsupported_encoding         415
    │   ├── IdentityError                      invalid_identity             422
    │   │   ├── InvalidWorkspace               invalid_workspace            422
    │   │   └── InvalidEmail                   invalid_email                422
    │   ├── ManifestError                      unusable_manifest            422
    │   ├── AmountError                        invalid_amount               422
    │   └── DurationError                      invalid_duration             422
    ├── Unauthenticated                        unauthenticated              401
    ├── Forbidden                              forbidden                    403
    │   └── WorkspaceSuspended                 workspace_suspended          403
    ├── NotFound                               not_found                    404
    ├── Conflict                               conflict                     409
    │   └── BatchBusy                          batch_busy                   409  retryable
    ├── RateLimited                            rate_limited                 429  retryable
    ├── ConfigError                            config_error                 503
    │   └── NotConfigured                      not_configured               503
    ├── CatalogError                           catalog_error                500
    ├── StorageError                           storage_error                500
    ├── DatabaseBusy                           database_busy                503  retryable
    ├── ControlError                           control_error                500
    │   └── ServiceUnavailable                 control_unavailable          503  retryable
    │       └── SimulatorUnavailable           simulator_unavailable        503  retryable
    ├── VaultError                             vault_error                  500
    ├── SummaryError                           summary_error                500
    ├── QueryError                             query_error                  400
    ├── BatchError                             batch_error                  409
    │   ├── IllegalTransition                  illegal_transition           409
    │   └── AwaitingApproval                   awaiting_approval            409
    ├── LedgerError                            ledger_error                 400
    │   ├── InsufficientCredits                insufficient_credits         402
    │   ├── InvalidAmount                      invalid_amount (shares)      422
    │   ├── InvalidKey                         invalid_idempotency_key      422
    │   ├── IdempotencyConflict                idempotency_conflict         409
    │   └── HoldError                          hold_error                   409
    ├── BillingError                           billing_error                400
    │   ├── SignatureError                     invalid_signature            400
    │   └── MalformedEvent                     malformed_event              400
    ├── AccessError                            access_error                 403
    │   ├── MissingApiKey                      unauthenticated (shares)     401  also Unauthenticated
    │   ├── InvalidApiKey                      invalid_key                  401  also Unauthenticated
    │   ├── KeyRevoked                         key_revoked                  401  also Unauthenticated
    │   ├── KeyExpired                         key_expired                  401  also Unauthenticated
    │   ├── KeyOwnerRemoved                    key_owner_removed            401  also Unauthenticated
    │   ├── KeyAlreadyRevoked                  key_revoked (shares)         409  also Conflict
    │   ├── KeyNotFound                        not_found (shares)           404  also NotFound
    │   ├── NotAMember                         not_a_member                 403  also Forbidden
    │   ├── LastOwner                          last_owner                   409  also Conflict
    │   ├── InvalidRole                        invalid_role                 422  also InvalidRequest
    │   ├── InvalidScope                       invalid_scope                422  also InvalidRequest
    │   ├── InvalidMemberWorkspace             invalid_workspace (shares)   422  also InvalidWorkspace
    │   └── InvalidMemberEmail                 invalid_email (shares)       422  also InvalidEmail
    ├── LinkError                              link_error                   400
    │   ├── LinkExpired                        link_expired                 403  also Forbidden
    │   ├── LinkSignatureInvalid               bad_signature                403  also Forbidden
    │   ├── LinkWorkspaceMismatch              cross_workspace              403  also Forbidden
    │   ├── LinkPathRefused                    path_traversal               400
    │   ├── LinkUnknownArtifact                unknown_artifact             404  also NotFound
    │   └── LinkNotFound                       not_found (shares)           404  also NotFound
    ├── DeliveryError                          delivery_error               400
    │   ├── EndpointRefused                    endpoint_refused             422  also InvalidRequest
    │   └── EndpointNotFound                   not_found (shares)           404  also NotFound
    ├── ProviderError                          provider_error               502
    │   ├── TransientError                     provider_transient           503  retryable
    │   │   ├── RateLimitedError               provider_rate_limited        429  retryable
    │   │   └── BatchCapacityError             provider_batch_capacity      503  retryable
    │   └── TerminalError                      provider_terminal            502
    │       └── RefusedError                   provider_refused             502
    └── WireRejection                          simulated_rejection          400

Messages say what was wrong, where (file, row, field) and what to do about it.
"""

from __future__ import annotations


def usd(micros: int) -> str:
    """An amount of micro-dollars as messages write it: `$1,234.500000`."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}${micros // 10**6:,}.{micros % 10**6:06d}"


class BatchRouterError(Exception):
    """Base of every deliberate BatchRouter error."""

    code: str = "batchrouter_error"
    http_status: int = 400
    retryable: bool = False
    param: str | None = None  # the request field at fault, when one is (API error bodies carry it)


# -- refusals any face may answer ----------------------------------------------------------------
class InvalidRequest(BatchRouterError):
    """The request itself is wrong (a field, a value, a name); fix it and send it again."""

    code = "invalid_request"
    http_status = 422

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        if param is not None:
            self.param = param


class UnreadableRequest(InvalidRequest):
    """The request cannot be read at all (a Content-Length that is not a number, a body cut short)."""

    http_status = 400


class PayloadTooLarge(InvalidRequest):
    """A body, upload or decompressed manifest is over its size limit."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedEncoding(InvalidRequest):
    """A body's Content-Encoding is neither gzip nor none."""

    code = "unsupported_encoding"
    http_status = 415


class Unauthenticated(BatchRouterError):
    """No usable credential was sent."""

    code = "unauthenticated"
    http_status = 401


class Forbidden(BatchRouterError):
    """The caller is known but may not do this (scope, role, owner rules)."""

    code = "forbidden"
    http_status = 403


class WorkspaceSuspended(Forbidden):
    """The workspace is suspended: every call is refused until an operator lifts the suspension."""

    code = "workspace_suspended"


class NotFound(BatchRouterError):
    """The thing named does not exist (or belongs to another workspace, which is told the same)."""

    code = "not_found"
    http_status = 404


class Conflict(BatchRouterError):
    """The request clashes with the current state of what it names."""

    code = "conflict"
    http_status = 409


class BatchBusy(Conflict):
    """Another process is running the batch right now (it holds the batch's lease)."""

    code = "batch_busy"
    retryable = True


class RateLimited(BatchRouterError):
    """Too many requests; `retry_after_s` says when to try again."""

    code = "rate_limited"
    http_status = 429
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# -- the installation ------------------------------------------------------------------------------
class ConfigError(BatchRouterError):
    """The configuration file or an environment override is invalid, or a needed setting is missing."""

    code = "config_error"
    http_status = 503


class NotConfigured(ConfigError):
    """A setting this operation needs is missing on the server (e.g. the Stripe keys)."""

    code = "not_configured"


class CatalogError(BatchRouterError):
    """The model catalog or a model override is inconsistent."""

    code = "catalog_error"
    http_status = 500


class StorageError(BatchRouterError):
    """The storage root cannot be read or written."""

    code = "storage_error"
    http_status = 500


class DatabaseBusy(BatchRouterError):
    """Another process kept the database file locked for longer than the timeout."""

    code = "database_busy"
    http_status = 503
    retryable = True


class ControlError(BatchRouterError):
    """The control service could not be reached, or failed running an operation."""

    code = "control_error"
    http_status = 500


class ServiceUnavailable(ControlError):
    """No control service could be reached or started."""

    code = "control_unavailable"
    http_status = 503
    retryable = True


class SimulatorUnavailable(ServiceUnavailable):
    """The built-in provider simulator could not be started or stopped (its log says why)."""

    code = "simulator_unavailable"


class VaultError(BatchRouterError):
    """A secret cannot be sealed or unsealed with the configured keys."""

    code = "vault_error"
    http_status = 500


class SummaryError(BatchRouterError):
    """A summary cannot be written, or a batch folder cannot be read to verify it."""

    code = "summary_error"
    http_status = 500


# -- names and input -------------------------------------------------------------------------------
class IdentityError(InvalidRequest):
    """A workspace name or an email address is not acceptable; `message` says why."""

    code = "invalid_identity"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidWorkspace(IdentityError):
    """A workspace name that cannot be one (see `core.identity.WORKSPACE_PATTERN`)."""

    code = "invalid_workspace"


class InvalidEmail(IdentityError):
    """A value that is not an email address."""

    code = "invalid_email"


class ManifestError(InvalidRequest):
    """A manifest cannot be used at all; individual bad rows are rejections, not errors."""

    code = "unusable_manifest"

    def __init__(self, source: str, problem: str, fix: str) -> None:
        self.source = source
        self.problem = problem
        self.fix = fix
        self.report: str | None = None  # where the quarantined copy's report is, once it is kept
        super().__init__(f"{source}: {problem}. {fix[:1].upper()}{fix[1:]}")


class AmountError(InvalidRequest, ValueError):
    """An amount of money is not a usable amount (pydantic reports it as a validation error too)."""

    code = "invalid_amount"


class DurationError(InvalidRequest, ValueError):
    """A duration (a deadline, a config value) is not one `core.durations` reads, such as 24h, 30m or 90."""

    code = "invalid_duration"


class QueryError(BatchRouterError):
    """A reporting query was refused (not read-only, not allowed) or failed."""

    code = "query_error"
    http_status = 400


# -- batches ---------------------------------------------------------------------------------------
class BatchError(BatchRouterError):
    """A batch is unknown, or its state forbids the operation."""

    code = "batch_error"
    http_status = 409


class IllegalTransition(BatchError):
    """A batch was asked to move to a state that may not follow its current one."""

    code = "illegal_transition"


class AwaitingApproval(BatchError):
    """The batch's quote is over the workspace's auto-approval limit and nobody has approved it yet."""

    code = "awaiting_approval"


# -- money -----------------------------------------------------------------------------------------
class LedgerError(BatchRouterError):
    """A ledger operation was refused."""

    code = "ledger_error"
    http_status = 400


class InsufficientCredits(LedgerError):
    """The workspace's available credit is less than the reservation; `missing` is the gap in micro-USD."""

    code = "insufficient_credits"
    http_status = 402

    def __init__(self, workspace: str, needed: int, available: int) -> None:
        self.workspace, self.needed, self.available = workspace, needed, available
        self.missing = needed - available
        super().__init__(
            f"workspace {workspace} needs {usd(needed)} but has {usd(available)} available: "
            f"{usd(self.missing)} missing; buy credits (batchrouter credits buy) or lower the batch's max_tokens"
        )


class InvalidAmount(LedgerError):
    """An amount is not a whole number of micro-dollars from 0 to `money.MAX_USD_MICROS`."""

    code = "invalid_amount"
    http_status = 422


class InvalidKey(LedgerError):
    """An operator's idempotency key is empty, too long, or takes the engine's own namespace."""

    code = "invalid_idempotency_key"
    http_status = 422


class IdempotencyConflict(LedgerError):
    """An idempotency key was used before for a different operation or amount."""

    code = "idempotency_conflict"
    http_status = 409


class HoldError(LedgerError):
    """A hold is missing, or not in a state that allows the operation (settle, void, expire)."""

    code = "hold_error"
    http_status = 409


class BillingError(BatchRouterError):
    """A billing operation failed (unknown pack, Stripe refused or unreachable)."""

    code = "billing_error"
    http_status = 400


class SignatureError(BillingError):
    """A webhook's Stripe-Signature is missing, stale, forged or does not match the body."""

    code = "invalid_signature"


class MalformedEvent(BillingError):
    """A genuinely signed event lacks a field fulfilment needs, or has it with the wrong type."""

    code = "malformed_event"


# -- access ----------------------------------------------------------------------------------------
class AccessError(BatchRouterError):
    """An access refusal (keys, members, roles); `message` says why, `status` is `http_status`."""

    code = "access_error"
    http_status = 403

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def status(self) -> int:
        return self.http_status


class MissingApiKey(Unauthenticated, AccessError):
    """No API key was sent, or not as 'Authorization: Bearer br_...'."""


class InvalidApiKey(Unauthenticated, AccessError):
    """The API key is not one this installation issued."""

    code = "invalid_key"


class KeyRevoked(Unauthenticated, AccessError):
    """The API key was revoked."""

    code = "key_revoked"


class KeyExpired(Unauthenticated, AccessError):
    """The API key has expired."""

    code = "key_expired"


class KeyOwnerRemoved(Unauthenticated, AccessError):
    """The member who created the API key left the workspace."""

    code = "key_owner_removed"


class KeyAlreadyRevoked(Conflict, AccessError):
    """A revoked key cannot be rotated (shares `key_revoked`, answered as a conflict)."""

    code = "key_revoked"


class KeyNotFound(NotFound, AccessError):
    """No such key in the workspace."""


class NotAMember(Forbidden, AccessError):
    """The email is not a member of the workspace."""

    code = "not_a_member"


class LastOwner(Conflict, AccessError):
    """A workspace keeps at least one owner: the last one cannot leave or be demoted."""

    code = "last_owner"


class InvalidRole(InvalidRequest, AccessError):
    """A role that is not one of `access.accounts.ROLES`."""

    code = "invalid_role"


class InvalidScope(InvalidRequest, AccessError):
    """Scopes that are not a non-empty subset of `access.accounts.SCOPES`."""

    code = "invalid_scope"


class InvalidMemberWorkspace(InvalidWorkspace, AccessError):
    """A workspace name given to the accounts store cannot be one."""


class InvalidMemberEmail(InvalidEmail, AccessError):
    """An email given to the accounts store is not an email address."""


# -- outputs ---------------------------------------------------------------------------------------
class LinkError(BatchRouterError):
    """An artifact link was refused."""

    code = "link_error"
    http_status = 400


class LinkExpired(Forbidden, LinkError):
    """The link's expiry has passed; ask for a new link."""

    code = "link_expired"


class LinkSignatureInvalid(Forbidden, LinkError):
    """The link's signature does not match its workspace, batch, artifact and expiry."""

    code = "bad_signature"


class LinkWorkspaceMismatch(Forbidden, LinkError):
    """The batch named by the link belongs to another workspace."""

    code = "cross_workspace"


class LinkPathRefused(LinkError):
    """A path component tries to leave its folder ('/', '\\', '..', NUL, percent-encoding)."""

    code = "path_traversal"
    http_status = 400


class LinkUnknownArtifact(NotFound, LinkError):
    """The artifact is not one a link may name."""

    code = "unknown_artifact"


class LinkNotFound(NotFound, LinkError):
    """The batch or its artifact does not exist."""


class DeliveryError(BatchRouterError):
    """A webhook operation was refused."""

    code = "delivery_error"
    http_status = 400


class EndpointRefused(InvalidRequest, DeliveryError):
    """The URL is not a usable public http(s) endpoint."""

    code = "endpoint_refused"


class EndpointNotFound(NotFound, DeliveryError):
    """No such webhook endpoint in the workspace."""


# -- providers -------------------------------------------------------------------------------------
class ProviderError(BatchRouterError):
    """A provider call did not give a usable answer.

    The exception: the instance's `code` is data, the provider failure code recorded in receipts'
    `error_code` (`timeout`, `rate_limited`, `refused`, ...); the class's `code` is its public code.
    `message` keeps the provider's words, `status` its HTTP status when there was one.
    """

    code = "provider_error"
    http_status = 502

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class TransientError(ProviderError):
    """Worth retrying: 5xx, 529, timeouts, resets, truncated bodies, stalls."""

    code = "provider_transient"
    http_status = 503
    retryable = True


class RateLimitedError(TransientError):
    """The provider said 429; `retry_after_s` is its Retry-After when given."""

    code = "provider_rate_limited"
    http_status = 429

    def __init__(
        self, code: str, message: str, *, status: int | None = 429, retry_after_s: float | None = None
    ) -> None:
        super().__init__(code, message, status=status)
        self.retry_after_s = retry_after_s


class BatchCapacityError(TransientError):
    """A provider batch was refused for capacity (OpenAI's enqueued-token limit): hold its lines and submit
    them again once batches in flight for that model have ended."""

    code = "provider_batch_capacity"
    http_status = 503


class TerminalError(ProviderError):
    """Retrying the same request cannot help: other 4xx, malformed requests."""

    code = "provider_terminal"
    retryable = False


class RefusedError(TerminalError):
    """The model declined; the tokens it used are still billed by the provider."""

    code = "provider_refused"

    def __init__(
        self, code: str, message: str, *, input_tokens: int, output_tokens: int, request_id: str | None
    ) -> None:
        super().__init__(code, message, status=200)
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.request_id = request_id


class WireRejection(BatchRouterError):
    """The simulated provider refuses a request; its server answers it as the provider would.

    Never leaves the simulator: `status`, `kind` and `param` are the provider's error body.
    """

    code = "simulated_rejection"
    http_status = 400

    def __init__(
        self, message: str, *, status: int = 400, kind: str = "invalid_request_error", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.param = param
