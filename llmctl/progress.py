"""Progress display for long work: a rich bar with documents/s, MB/s and ETA.

Workers do not touch the terminal: they send counts (`docs`, `bytes`, `tokens`) to the parent,
which owns one `StageProgress`. Off a terminal (CI, a log file) the bar is not drawn and the
stage prints its summary table at the end instead.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True)


class _RatesColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = max(task.elapsed or 0.0, 1e-9)
        f = task.fields
        parts = []
        if f.get("docs"):
            parts.append(f"{f['docs']:,} docs {f['docs'] / elapsed:,.1f}/s")
        if task.completed:
            parts.append(f"{task.completed / 1e6 / elapsed:,.2f} MB/s")
        if f.get("tokens"):
            parts.append(f"{f['tokens'] / elapsed:,.0f} tok/s")
        return Text("  ".join(parts), style="cyan")


class StageProgress:
    """One progress bar measured in input bytes, with document and token counters beside it."""

    def __init__(self, description: str, total_bytes: int | None, enabled: bool | None = None):
        self.enabled = console.is_terminal if enabled is None else enabled
        self.counts: dict[str, int] = {"docs": 0, "bytes": 0, "tokens": 0}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
            _RatesColumn(), TimeRemainingColumn(), console=console, disable=not self.enabled, transient=False,
        )
        self._task = self._progress.add_task(description, total=total_bytes or None, docs=0, tokens=0)
        self.started = time.time()

    def __enter__(self) -> "StageProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def update(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        self._progress.update(self._task, completed=self.counts["bytes"], docs=self.counts["docs"],
                              tokens=self.counts["tokens"])
