"""The simulated provider's refusal of a request."""

from __future__ import annotations

from batchrouter.core.errors import BatchRouterError


class WireRejection(BatchRouterError):
    """The simulated provider refuses the request; the server answers it as the provider would.

    Never leaves the simulator: the handler turns it into the provider's error body.
    """

    def __init__(
        self, message: str, *, status: int = 400, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.param = param
