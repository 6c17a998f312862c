"""The report's mixture section: for a `llmctl mix` output, the table its manifest holds and a bar
chart of each source's target and realized share of the training tokens, with its epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.report.charts import BLUE, ORANGE
from llmctl.report.html import esc, img, table
from llmctl.utils import plot
from llmctl.utils.plot import pyplot, style_axes


def mix_figure(sources: list[dict[str, Any]]) -> Any:
    plt = pyplot()

    names = [r["name"] for r in sources]
    y = range(len(names))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(names)))
    ax.barh([i - 0.2 for i in y], [100 * r["target_proportion"] for r in sources], 0.4, color=BLUE, label="target")
    ax.barh([i + 0.2 for i in y], [100 * r["proportion"] for r in sources], 0.4, color=ORANGE, label="realized")
    for i, r in enumerate(sources):
        ax.text(
            100 * max(r["proportion"], r["target_proportion"]) + 0.5,
            i,
            f"{100 * r['proportion']:.1f}% · {r['epochs']:.2f} epochs",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(list(y), names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100 * max(max(r["proportion"], r["target_proportion"]) for r in sources) * 1.35 + 1)
    ax.set_xlabel("% of training tokens")
    style_axes(ax, x=None, y=None)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("data mixture: share of training tokens per source")
    fig.tight_layout()
    return fig


def mix_section(name: str, stats: dict[str, Any], out: Path) -> str:
    """HTML of the section: chart, then the table a user reads first."""
    sources = stats["mix"]["sources"]
    png = plot.save(mix_figure(sources), out / f"{name}_mix.png", dpi=110)
    rows = [
        [
            r["name"],
            f"{100 * r['target_proportion']:.2f}%",
            f"{100 * r['proportion']:.2f}%",
            r["tokens"],
            r["documents"],
            f"{r['epochs']:.2f}",
            r["available_tokens"],
            r["val_documents"],
            r["lineage"].get("fingerprint", "")[:12],
        ]
        for r in sources
    ]
    tab = table(
        [
            "source",
            "target",
            "realized",
            "tokens",
            "documents",
            "epochs",
            "source tokens",
            "val docs",
            "source fingerprint",
        ],
        rows,
        classes={8: "fp"},
    )
    total = (
        f'<p class="muted">{stats["train"]["tokens"]:,} training tokens in {stats["train"]["documents"]:,} '
        f"documents; {stats['val']['documents']:,} val documents (each source's val split, once).</p>"
    )
    return f"<h2>Data mixture ({esc(name)})</h2>{img(png.name, 'data mixture')}{tab}{total}"
