"""What every command shares: `--config`, `--json`, `--workspace`, the settings, the exit codes.

Only the standard library and typer are imported here: `batchrouter --help` must not load the
engine (polars, duckdb, pydantic models). Command bodies import what they use.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from batchrouter.core.config import Settings
    from batchrouter.engine import BatchRouter

EXIT_OK, EXIT_NOTHING_ACCEPTED, EXIT_UNUSABLE = 0, 1, 2


@dataclass
class Face:
    """Options given before the subcommand (`batchrouter --config F credits balance ...`)."""

    config: str | None = None


def remember_config(ctx: typer.Context, config: str | None) -> None:
    """A group's `--config` (the innermost one given wins)."""
    face = ctx.ensure_object(Face)
    if config is not None:
        face.config = config


def load(ctx: typer.Context, config: str | None) -> Settings:
    """The settings from the innermost `--config` given, else $BATCHROUTER_CONFIG, else defaults."""
    from batchrouter.core.config import load_settings

    return load_settings(config or ctx.ensure_object(Face).config)


def engine(ctx: typer.Context, config: str | None) -> BatchRouter:
    """The engine on the settings of the innermost `--config` given (see `load`)."""
    from batchrouter.engine import BatchRouter

    return BatchRouter(load(ctx, config))


def _workspace(value: str | None) -> str | None:
    from batchrouter.core.identity import canonical_workspace

    return None if value is None else canonical_workspace(value)


def _email(value: str | None) -> str | None:
    from batchrouter.core.identity import canonical_email

    return None if value is None else canonical_email(value)


CONFIG_HELP = "TOML config file (default: $BATCHROUTER_CONFIG, else built-in defaults)"
ConfigOpt = Annotated[str | None, typer.Option("--config", help=CONFIG_HELP, show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
WorkspaceOpt = Annotated[str, typer.Option("--workspace", help="the workspace", callback=_workspace)]
OptionalWorkspaceOpt = Annotated[
    str | None, typer.Option("--workspace", help="restrict to this workspace", callback=_workspace)
]
WorkspaceArg = Annotated[str, typer.Argument(help="the workspace", callback=_workspace)]
EmailOpt = Annotated[str, typer.Option("--email", help="the member's email", callback=_email)]
ByEmailOpt = Annotated[str, typer.Option("--by", help="the member (email) the key acts for", callback=_email)]
RUN_TAG_HELP = "run the same bytes again on purpose: a new tag is a new batch (the same tag, the same batch)"
RunTagOpt = Annotated[str | None, typer.Option("--run-tag", help=RUN_TAG_HELP, show_default=False)]
DEADLINE_HELP = (
    "answer every item within this long (90s, 30m, 4h, 24h, 1d): each route takes the cheapest lane "
    "that makes it, the providers' batch APIs included; 'asap': online at once; default: the workspace's, "
    "else at once"
)
DeadlineOpt = Annotated[str | None, typer.Option("--deadline", help=DEADLINE_HELP, show_default=False)]


def jsonable(value: Any) -> Any:
    """A typed result (pydantic model), or a list of them, as the JSON it stands for."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any, *, indent: int | None = None) -> None:
    print(json.dumps(jsonable(value), indent=indent, default=str))


def fail(message: str, code: int = EXIT_NOTHING_ACCEPTED) -> NoReturn:
    """Say what went wrong on stderr and leave with `code`."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def leave(code: int) -> None:
    """Leave with `code` (0 returns normally)."""
    if code:
        raise typer.Exit(code)


def read_input(path: str) -> bytes:
    """A manifest's bytes from a path or URL (fsspec)."""
    import fsspec

    with fsspec.open(path, "rb") as f:
        return bytes(f.read())
