"""Progress display for long work: a rich bar with documents/s, MB/s and ETA.

Workers do not touch the terminal: they send counts (`docs`, `bytes`, `tokens`) to the parent,
which owns one `StageProgress`. Off a terminal (CI, a log file) the bar is not drawn and the
stage prints its summary table at the end instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text


def make_console(stderr: bool = False) -> Console:
    """A rich console that reads well where it ends up: on a terminal, wrapped to its width; in a
    pipe or a file (make, CI logs) no line is wrapped (an echoed command stays one line) and tables
    take their natural width, unless COLUMNS says otherwise."""
    c = Console(stderr=stderr)
    if c.is_terminal or os.environ.get("COLUMNS"):
        return c
    return Console(stderr=stderr, soft_wrap=True, width=1000)


console = make_console(stderr=True)


class _RatesColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = max(task.elapsed or 0.0, 1e-9)
        f = task.fields
        parts = []
        if f.get("unit") == "tasks" and task.total:
            parts.append(f"{f['tasks']:,}/{int(task.total):,} tasks")
        if f.get("docs"):
            parts.append(f"{f['docs']:,} docs {f['docs'] / elapsed:,.1f}/s")
        if f.get("bytes"):
            parts.append(f"{f['bytes'] / 1e6 / elapsed:,.2f} MB/s")
        if f.get("tokens"):
            parts.append(f"{f['tokens'] / elapsed:,.0f} tok/s")
        return Text("  ".join(parts), style="cyan")


class StageProgress:
    """One progress bar measured in `unit` (input bytes by default; documents; or finished tasks,
    which a task reports with `report(tasks=1)`), with document and token counters beside it."""

    def __init__(self, description: str, total: int | None, enabled: bool | None = None, unit: str = "bytes"):
        self.enabled = console.is_terminal if enabled is None else enabled
        self.unit = unit
        self.counts: dict[str, int] = {"docs": 0, "bytes": 0, "tokens": 0, "tasks": 0}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            _RatesColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total or None, unit=unit, **self.counts)
        self.started = time.time()

    def __enter__(self) -> StageProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def update(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        self._progress.update(self._task, completed=self.counts[self.unit], **self.counts)


def note(message: str, progress: bool | None = None) -> None:
    """One line on stderr about what a stage is doing (not when the caller turned progress off)."""
    if progress is not False:
        console.print(message, markup=False, highlight=False, soft_wrap=True)  # one line, also in a log


def note_resume(out: Any, total: int, progress: bool | None = None) -> None:
    """Say so when a stage picks up the finished tasks of an interrupted run."""
    if out.resumed_tasks:
        note(f"resuming: {out.resumed_tasks} of {total} tasks finished by an earlier run are kept", progress)
