"""The provider simulator: a real HTTP server that answers and bills like OpenAI, Anthropic and OpenRouter.

- `server`: the aiohttp app, limits, faults and the answers it writes;
- `requests`: what each wire accepts and the plan of a request (billed prompt, output cap);
- `billing`: prompt tokens by the providers' published rules (messages, tools, schemas, caching);
- `images`: image sizes and what images cost;
- `models`: what a model name says (encoding, reasoning, flex, caching);
- `openai_batches`, `anthropic_batches`: the providers' batch APIs (files, batch objects, results);
- `provider_batches`: what they share (the accelerated clock, a batch's timeline, lines and their price).

The rules are written apart from `quote` and `routing` on purpose, so tests can compare the two.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchrouter.simulator.server import STATE, SimulatorState, build_app, running_simulator, serve

__all__ = ["STATE", "SimulatorState", "build_app", "running_simulator", "serve"]


def __getattr__(name: str) -> Any:
    """The server's names, loaded when first asked: a run that only finds the shared simulator's URL
    (`shared`) does not load the aiohttp server."""
    if name in __all__:
        from batchrouter.simulator import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
