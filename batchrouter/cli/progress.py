"""`batchrouter run`'s progress display: a rich bar on a terminal's stderr, silent anywhere else.

It shows items done of total, the rate (items/s), the time left, the cost so far and the items by
status, all derived from the engine's progress reports (succeeded, failed, total, cost, elapsed).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn


class Report(Protocol):
    """What the engine reports while a batch runs (batchrouter.batches: Progress)."""

    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def cost_usd_micros(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def describe(report: Report) -> str:
    """`12.5 items/s  ETA 0:01:20  cost $0.012345  ok 120  failed 3`."""
    from batchrouter.cli.render import usd

    done = report.succeeded + report.failed
    rate = done / report.elapsed_s if report.elapsed_s > 0 else 0.0
    left = max(report.total - done, 0)
    eta = _clock(left / rate) if rate > 0 else ("0:00:00" if not left else "-:--:--")
    return (
        f"{rate:,.1f} items/s  ETA {eta}  cost {usd(report.cost_usd_micros)}  "
        f"ok {report.succeeded:,}  failed {report.failed:,}"
    )


class RunProgress:
    """Use as a context manager and pass as `on_progress`; does nothing when disabled."""

    def __init__(self, *, enabled: bool | None = None, console: Console | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self.enabled:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                console=console or Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task("dispatch", total=None, stats="waiting for the first answers")

    def __enter__(self) -> RunProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, report: Report) -> None:
        if self._bar is None or self._task is None:
            return
        done = report.succeeded + report.failed
        self._bar.update(self._task, completed=done, total=report.total, stats=describe(report))
