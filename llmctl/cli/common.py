"""Helpers the command modules share: printing tables and manifests."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def print_funnel(rows: list[dict[str, Any]], title: str = "filter funnel") -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("step / reason")
    table.add_column("documents", justify="right")
    table.add_column("% of read", justify="right")
    table.add_column("bytes", justify="right")
    read = max(1, rows[0]["docs"])
    for r in rows:
        style = "bold" if r["row"] in ("read", "kept") else None
        table.add_row(r["row"], f"{r['docs']:,}", f"{100 * r['docs'] / read:.1f}%", human_bytes(r["bytes"]), style=style)
    out.print(table)


def print_config(cfg: Any) -> None:
    """Print a resolved stage config as YAML (what --config files look like)."""
    import yaml

    from llmctl.config import to_dict

    out.print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="", markup=False, highlight=False)
