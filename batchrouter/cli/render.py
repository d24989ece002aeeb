"""Results as people read them: rich tables, money in dollars ($1.234567), on stdout.

On a terminal rich adds colour and fits the width; piped or captured, the same text comes out plain
and unwrapped (a route name or a reason is never cut). `render_*` return the text, for callers that
print it themselves (pipelines/demo.py).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.box import Box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from batchrouter.core.durations import format_duration


def usd(micros: int) -> str:
    """Micro-dollars as `$1,234.567890` (the ledger's own spelling)."""
    from batchrouter.money.ledger import usd as ledger_usd

    return ledger_usd(micros)


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); plain and unwrapped when that is not a terminal."""
    file = sys.stderr if stderr else sys.stdout
    width = None if file.isatty() else 100_000
    return Console(file=file, width=width, markup=False, highlight=False, soft_wrap=width is not None)


def show(*renderables: RenderableType) -> None:
    console().print(*renderables)


def to_text(renderable: RenderableType) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=100_000, markup=False, highlight=False, color_system=None).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))


NUMERIC = {"ITEMS", "SUCCEEDED", "INPUT TOKENS", "OUTPUT TOKENS", "MAX OUTPUT", "RESERVE", "EXPECTED", "COST",
           "AMOUNT", "ROW", "FAILURES", "AVAILABLE", "HELD", "SPENT", "CREDITED", "RESERVED", "CAPTURED"}  # fmt: skip


# SIMPLE_HEAD drawn with "-": what a pipe, a log or a test reads.
ASCII_HEAD = Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> Table:
    """A plain table: upper-case headers, numbers and money right-aligned."""
    lines = box.SIMPLE_HEAD if sys.stdout.isatty() else ASCII_HEAD
    grid = Table(box=lines, show_edge=False, pad_edge=False, title=title, title_justify="left")
    for header in headers:
        grid.add_column(header, justify="right" if header in NUMERIC else "left", overflow="fold")
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    return grid


def quote_view(summary: Mapping[str, Any]) -> Group:
    parts: list[RenderableType] = [
        Text(f"Quote {summary['quote_id']}  workspace {summary['workspace']}  catalog {summary['catalog_version']}"),
        Text(
            f"Manifest {summary['source']}: {summary['items']} rows, {summary['accepted']} accepted, "
            f"{summary['rejected']} rejected"
        ),
        Text(f"Reserve {usd(summary['reserve_usd_micros'])}   expected {usd(summary['expected_usd_micros'])}"),
    ]
    if summary["by_route"]:
        parts += [Text(""), table(
            ["ROUTE", "MODEL", "ITEMS", "INPUT TOKENS", "MAX OUTPUT", "RESERVE", "EXPECTED"],
            [[r["route"], r["model"], r["items"], f"{r['input_tokens']:,}", f"{r['max_output_tokens']:,}",
              usd(r["reserve_usd_micros"]), usd(r["expected_usd_micros"])] for r in summary["by_route"]],
        )]  # fmt: skip
    if summary.get("deadline_s") is not None and summary.get("by_lane"):
        saving = (summary.get("online_expected_usd_micros") or 0) - summary["expected_usd_micros"]
        parts += [Text(""), Text(f"Deadline {format_duration(summary['deadline_s'])}: expected "
                                 f"{usd(summary['expected_usd_micros'])}, {usd(saving)} less than all online"), table(
            ["ROUTE", "LANE", "ITEMS", "EXPECTED", "ONLINE", "SAVING"],
            [[r["route"], r["lane"], r["items"], usd(r["expected_usd_micros"]), usd(r["online_expected_usd_micros"]),
              usd(r["saving_usd_micros"])] for r in summary["by_lane"]],
        )]  # fmt: skip
    if summary["rejections"]:
        parts += [Text(""), Text(f"Rejected rows ({summary['rejected']}):"), table(
            ["ROW", "ITEM", "FIELD", "REASON"],
            [[r["row"], r["item_id"] or "", r["field"], r["reason"]] for r in summary["rejections"]],
        )]  # fmt: skip
    return Group(*parts)


def run_view(summary: Mapping[str, Any]) -> Group:
    parts: list[RenderableType] = [
        Text(f"Batch {summary['batch_id']}  workspace {summary['workspace']}  status {summary['status']}"),
        Text(
            f"{summary['items']} items: {summary['succeeded']} succeeded, {summary['failed']} failed, "
            f"{summary['rejected']} rejected"
        ),
        Text(
            f"Reserved {usd(summary['reserve_usd_micros'])}   cost {usd(summary['cost_usd_micros'])}   "
            f"retries {summary['retries']}   p50 {summary['latency_p50_ms'] or 0:.0f} ms   "
            f"p95 {summary['latency_p95_ms'] or 0:.0f} ms"
        ),
    ]
    if summary["by_route"]:
        parts += [Text(""), table(
            ["ROUTE", "ITEMS", "SUCCEEDED", "INPUT TOKENS", "OUTPUT TOKENS", "COST"],
            [[r["route"], r["items"], r["succeeded"], f"{r['input_tokens']:,}", f"{r['output_tokens']:,}",
              usd(r["cost_usd_micros"])] for r in summary["by_route"]],
        )]  # fmt: skip
    if summary["failures"]:
        failures = ", ".join(f"{f['error_code']} x{f['len']}" for f in summary["failures"])
        parts += [Text(""), Text(f"Failures: {failures}")]
    if summary.get("state") == "waiting_on_provider":
        parts += [Text(""), Text(f"{summary['pending']} items are in provider batches: run the same command again "
                                 "(or with --wait) to collect them, or let the Dagster sensor do it")]  # fmt: skip
    parts += [Text(""), Text(f"Outputs:  {summary['outputs']}"), Text(f"Receipts: {summary['receipts']}")]
    return Group(*parts)


def status_view(status: Mapping[str, Any]) -> Group:
    parts: list[RenderableType] = [
        Text(f"Batch {status['batch_id']}  workspace {status['workspace']}  status {status['status']}")
    ]
    if status.get("message"):
        parts.append(Text(f"  {status['message']}"))
    if status.get("quote"):
        q = status["quote"]
        parts.append(Text(f"Quote {q['quote_id']}: {q['accepted']} accepted, {q['rejected']} rejected; reserve "
                          f"{usd(q['reserve_usd_micros'])}, expected {usd(q['expected_usd_micros'])}"))  # fmt: skip
    if status.get("items_by_status"):
        parts.append(table(["ITEMS", "STATUS"], [[n, k] for k, n in status["items_by_status"].items()]))
        parts.append(Text(f"Actual cost {usd(status.get('actual_usd_micros') or 0)}"))
    if status.get("lanes"):
        parts.append(table(["LANE", "ITEMS", "ANSWERED", "WAITING", "HEDGED"],
                           [[r["lane"], r["items"], r["answered"], r["waiting"], r["hedged"]]
                            for r in status["lanes"]]))  # fmt: skip
    if status.get("provider_batches"):
        parts.append(table(["PROVIDER", "PROVIDER BATCH", "STATUS", "HERE", "LINES"],
                           [[b["provider"], b["provider_batch_id"] or "", b["status"], b["state"], b["lines"]]
                            for b in status["provider_batches"]]))  # fmt: skip
    if status.get("time_left_s") is not None:
        left = status["time_left_s"]
        when = f"{format_duration(left)} left" if left > 0 else f"passed {format_duration(-left)} ago"
        parts.append(Text(f"Deadline {status['deadline_at']} ({when})"))
    if status.get("holds"):
        parts.append(table(["HOLD", "STATUS", "RESERVED", "CAPTURED"],
                           [[h["hold"], h["status"], usd(h["reserved_usd_micros"]), usd(h["captured_usd_micros"])]
                            for h in status["holds"]]))  # fmt: skip
    return Group(*parts)


def balance_view(balance: Mapping[str, Any]) -> Group:
    verdict = "credited = available + held + spent" if balance["balanced"] else "NOT BALANCED"
    grid = table(["WORKSPACE", "AVAILABLE", "HELD", "SPENT", "CREDITED"],
                 [[balance["workspace"], usd(balance["available_usd_micros"]), usd(balance["held_usd_micros"]),
                   usd(balance["spent_usd_micros"]), usd(balance["credited_usd_micros"])]])  # fmt: skip
    return Group(grid, Text(f"({verdict})"))


def history_view(rows: Iterable[Mapping[str, Any]]) -> Table:
    return table(["TIME", "OP", "BATCH", "AMOUNT", "MEMO"],
                 [[str(r["created_at"])[:19], r["op"], r["batch_id"] or "", usd(r["amount_usd_micros"]),
                   r["memo"] or ""] for r in rows])  # fmt: skip


def render_quote(summary: Mapping[str, Any]) -> str:
    return to_text(quote_view(summary))


def render_run(summary: Mapping[str, Any]) -> str:
    return to_text(run_view(summary))


def render_balance(balance: Mapping[str, Any]) -> str:
    """One line: available, held, spent, credited (and whether they add up)."""
    return (
        f"Workspace {balance['workspace']}: available {usd(balance['available_usd_micros'])}, "
        f"held {usd(balance['held_usd_micros'])}, spent {usd(balance['spent_usd_micros'])}, "
        f"credited {usd(balance['credited_usd_micros'])}"
        + ("  (credited = available + held + spent)" if balance["balanced"] else "  (NOT BALANCED)")
    )
