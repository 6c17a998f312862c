"""Helpers the command modules share: printing tables and configs."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from llmctl.utils.formatting import format_value, human_bytes
from llmctl.utils.progress import make_console

out = make_console()


def print_funnel(rows: list[dict[str, Any]], title: str = "filter funnel") -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("step / reason")
    table.add_column("documents", justify="right")
    table.add_column("% of read", justify="right")
    table.add_column("bytes", justify="right")
    read = max(1, rows[0]["docs"])
    for r in rows:
        style = "bold" if r["row"] in ("read", "kept") else None
        table.add_row(
            r["row"], f"{r['docs']:,}", f"{100 * r['docs'] / read:.1f}%", human_bytes(r["bytes"]), style=style
        )
    out.print(table)


def print_results(rows: list[dict[str, Any]], title: str = "eval") -> None:
    """The eval results (one row per task and metric) as a rich table, like every stage's summary."""
    table = Table(title=title, title_justify="left")
    for col, just in (("task", "left"), ("metric", "left"), ("value", "right"), ("stderr", "right"), ("n", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        err = "" if r.get("stderr") is None else f"{r['stderr']:.4f}"
        table.add_row(r["task"], r["metric"], format_value(r["metric"], r["value"]), err, f"{r['n']:,}")
    out.print(table)


def print_config(cfg: Any) -> None:
    """Print a resolved stage config as YAML (what --config files look like)."""
    import yaml

    from llmctl.config import to_dict

    out.print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="", markup=False, highlight=False)
