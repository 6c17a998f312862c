"""The report's Mixture-of-Experts chart: each MoE layer's expert load over training, and imbalance.

One panel per MoE layer: the fraction of routed assignments each expert received at each step
(`moe_load/L{layer}/e{expert}` in metrics.jsonl), stacked so the panel's height is 1; balanced
routing is equal bands, collapse is one band taking the panel. The last panel is the imbalance
(max/mean load, the worst layer) with 1.0, perfect balance, marked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmctl.report.html import esc, img
from llmctl.utils import plot
from llmctl.utils.plot import pyplot, style_axes

_LOAD = re.compile(r"^moe_load/L(\d+)/e(\d+)$")


def expert_loads(recs: list[dict[str, Any]]) -> dict[int, list[list[float]]]:
    """{layer: [per-expert load series]} from training records."""
    keys: dict[int, dict[int, str]] = {}
    for k in recs[0] if recs else {}:
        m = _LOAD.match(k)
        if m:
            keys.setdefault(int(m.group(1)), {})[int(m.group(2))] = k
    return {
        layer: [[r.get(e_key, 0.0) for r in recs] for _, e_key in sorted(ex.items())]
        for layer, ex in sorted(keys.items())
    }


def moe_figure(run: str | Path) -> Any | None:
    """The chart of an MoE run; None for a run without expert loads (a dense model)."""
    recs = [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if "loss" in r]
    loads = expert_loads(recs)
    if not loads:
        return None
    plt = pyplot()

    steps = [r["step"] for r in recs]
    n = len(loads) + 1
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.8 * n + 1), sharex=True)
    for ax, (layer, series) in zip(axes, loads.items()):
        ax.stackplot(steps, series, labels=[f"e{e}" for e in range(len(series))], alpha=0.85)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"layer {layer}\nload share")
        style_axes(ax, y=None)
    axes[0].legend(
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=1 + len(loads[next(iter(loads))]) // 17
    )
    imb = axes[-1]
    imb.plot(steps, [r.get("moe_imbalance", float("nan")) for r in recs], color="C3", lw=1.2)
    imb.axhline(1.0, color="#999", lw=0.8, ls=":")
    imb.set_ylabel("imbalance\n(max/mean load)")
    imb.set_xlabel("step")
    imb.grid(alpha=0.3)
    style_axes(imb)
    axes[0].set_title("MoE: expert load over training (fraction of routed tokens per expert)")
    fig.tight_layout()
    return fig


def moe_section(name: str, run: Path, out: Path) -> str:
    """The report's HTML for one run ('' for a dense run)."""
    fig = moe_figure(run)
    if fig is None:
        return ""
    png = plot.save(fig, out / f"{name}_experts.png")
    return f"<h3>{esc(name)}: expert load</h3>{img(png.name, name + ' expert load')}"
