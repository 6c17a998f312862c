"""How numbers are written for people, the same in the terminal and in the report."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


COUNT_SUFFIXES = ("items", "documents", "docs", "pairs", "rows")  # eval metrics that count things


def format_value(metric: str, value: float | None) -> str:
    """An eval value as the table shows it: counts as integers (`train_documents 529`), the rest to
    4 decimals."""
    if value is None:
        return ""
    if metric.endswith(COUNT_SUFFIXES) and float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4f}"
