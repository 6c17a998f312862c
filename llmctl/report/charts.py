"""The report's data charts (matplotlib figures; `llmctl.utils.plot.save` writes them): the filter funnel
and tokens per split. Training charts are in llmctl.utils.plot.

The funnel has two panels: documents read, removed, unreadable and kept on one scale, and each
removal rule on its own scale below, so a rule that removed 2 documents of 590 is a readable bar
rather than a sliver beside `read`.
"""

from __future__ import annotations

from typing import Any

from llmctl.utils.plot import pyplot, style_axes

BLUE, ORANGE, GREY, GREEN = "#4c72b0", "#dd8452", "#999999", "#55a868"


def _bars(ax: Any, labels: list[str], vals: list[int], colors: list[str]) -> None:
    ax.barh(range(len(vals)), vals, color=colors)
    ax.set_yticks(range(len(vals)), labels, fontsize=8)
    ax.invert_yaxis()
    top = max(vals, default=0) or 1
    for i, v in enumerate(vals):
        ax.text(v + top * 0.01, i, f"{v:,}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.12)
    style_axes(ax, x="int", y=None)
    ax.grid(axis="x", alpha=0.3)


def funnel_figure(rows: list[dict[str, Any]]) -> Any:
    """Two panels: the totals (read, removed, unreadable, kept), then documents removed by each rule."""
    plt = pyplot()

    docs = {r["row"]: int(r["docs"]) for r in rows}
    causes = [r for r in rows if r["row"] not in ("read", "kept")]
    removed = sum(int(r["docs"]) for r in causes if r["row"].startswith("rejected."))
    unreadable = sum(int(r["docs"]) for r in causes if r["row"].startswith("unreadable."))
    totals = [
        ("read", docs.get("read", 0), BLUE),
        ("removed by a rule", removed, ORANGE),
        ("unreadable", unreadable, GREY),
        ("kept", docs.get("kept", 0), GREEN),
    ]
    n = max(1, len(causes))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 1.6 + 0.3 * (len(totals) + n)), height_ratios=(len(totals), n))
    _bars(top, [t[0] for t in totals], [t[1] for t in totals], [t[2] for t in totals])
    top.set_title("filter funnel: documents read, removed, kept")
    if causes:
        _bars(
            bottom,
            [r["row"] for r in causes],
            [int(r["docs"]) for r in causes],
            [GREY if r["row"].startswith("unreadable") else ORANGE for r in causes],
        )
    bottom.set_title("removed or unreadable, by rule (its own scale)", fontsize=10)
    bottom.set_xlabel("documents")
    fig.tight_layout()
    return fig


def tokens_figure(stats: dict[str, Any]) -> Any:
    plt = pyplot()

    splits = [s for s in ("train", "val") if isinstance(stats.get(s), dict)]
    fig, ax = plt.subplots(figsize=(5, 3))
    vals = [stats[s]["tokens"] for s in splits]
    ax.bar(splits, vals, color=[BLUE, GREEN][: len(splits)])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("tokens")
    style_axes(ax, x=None, y="int")
    ax.set_title("tokens per split")
    fig.tight_layout()
    return fig
