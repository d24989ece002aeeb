"""The simulated provider's refusal of a request (declared in batchrouter.core.errors)."""

from batchrouter.core.errors import WireRejection

__all__ = ["WireRejection"]
