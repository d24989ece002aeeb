"""The `batchrouter` command: a typer app whose handlers call the engine and render its results."""

from __future__ import annotations

import sys

import typer

from batchrouter.cli import access, batches, money, ops
from batchrouter.cli.common import EXIT_UNUSABLE, ConfigOpt, Face

app = typer.Typer(
    name="batchrouter",
    help="Route and run large batches of LLM requests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(ctx: typer.Context, config: ConfigOpt = None) -> None:
    ctx.obj = Face(config)


for command in (batches.quote, batches.submit, batches.run, batches.approve, batches.status, ops.sql, ops.serve,
                ops.simulate, ops.sample):  # fmt: skip
    app.command()(command)
app.command(context_settings=ops.VERIFY_CONTEXT, add_help_option=False)(ops.verify)
for group, name in ((money.credits, "credits"), (money.ledger, "ledger"), (access.keys, "keys"),
                    (access.members, "members"), (access.workspace, "workspace"), (access.secrets, "secrets"),
                    (ops.webhooks, "webhooks")):  # fmt: skip
    app.add_typer(group, name=name)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); the exit code (0, 1 or 2, see the package)."""
    from batchrouter.core.errors import BatchRouterError

    try:
        app(args=argv, prog_name="batchrouter")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BatchRouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or exc} does not exist; check the path", file=sys.stderr)
        return EXIT_UNUSABLE
    return 0
