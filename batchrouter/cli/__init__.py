"""The `batchrouter` command (typer + rich): thin handlers over the engine.

Exit codes: 0 success (for `quote`: at least one item accepted); 1 nothing usable came out (every
row rejected, approval needed, credit short, a ledger problem); 2 the input as a whole is unusable
(unreadable manifest, missing column, bad config, a refused option).

Files: `app` (the command tree and `main`), `common` (shared options and exit codes), one file per
family of commands (`batches`, `money`, `access`, `ops`), `render` (tables, dollars) and `progress`
(the run's progress display). `batchrouter --help` imports none of the engine: command bodies do.
"""

from batchrouter.cli.app import app, main
from batchrouter.cli.render import render_balance, render_quote, render_run

__all__ = ["app", "main", "render_balance", "render_quote", "render_run"]
