"""The report's RL section: reward and KL curves of an `llmctl rl` run, and its sampled completions.

Curves from RUN/metrics.jsonl: the rollout reward (GRPO's `reward`, PPO's `objective/scores`)
per step with the greedy held-out `val_reward` at evaluation steps, and the KL to the reference
(GRPO's `kl`, PPO's `objective/kl`, with `objective/kl_coef` when an adaptive controller moved it).
Samples from RUN/samples.jsonl: the last evaluation's rollout and held-out completions with rewards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmctl.report.html import esc, img, table
from llmctl.utils import plot
from llmctl.utils.plot import pyplot, style_axes

REWARD_KEYS = ("reward", "objective/scores")
KL_KEYS = ("kl", "objective/kl")


def _records(run: Path) -> list[dict[str, Any]]:
    out = []
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out


def curves_figure(run: Path) -> Any:
    plt = pyplot()

    recs = _records(run)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for key in REWARD_KEYS:
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            top.plot(*zip(*pts), label=f"rollout {key}", color="#4c72b0", alpha=0.8)
    val = [(r["step"], r["val_reward"]) for r in recs if "val_reward" in r]
    if val:
        top.plot(*zip(*val), "o-", label="held-out val_reward (greedy)", color="#55a868")
    top.set_ylabel("reward")
    top.set_title("RL: reward")
    top.legend(fontsize=8)
    for key in KL_KEYS:
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            bottom.plot(*zip(*pts), label=key, color="#dd8452")
    bottom.set_ylabel("KL to the reference")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        style_axes(ax, x="int", y=None)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def rl_section(name: str, run: Path, out: Path) -> str:
    """HTML for one rl run ('' when the run has no RL metrics)."""
    recs = _records(run) if (run / "metrics.jsonl").is_file() else []
    if not any(k in r for r in recs for k in REWARD_KEYS):
        return ""
    png = plot.save(curves_figure(run), out / f"{name}_rl.png")
    html = [f"<h3>{esc(name)}: reward and KL</h3>{img(png.name, name + ' reward and KL')}"]
    samples_path = run / "samples.jsonl"
    if samples_path.is_file():
        rows = [json.loads(ln) for ln in samples_path.read_text().splitlines() if ln.strip()]
        if rows:
            last = max(r["step"] for r in rows)
            shown = [r for r in rows if r["step"] == last]
            html.append(f"<h3>{esc(name)}: completions at step {last}</h3>")
            html.append(
                table(
                    ["kind", "prompt", "completion", "reward"],
                    [[r["kind"], r["prompt"][:200], r["completion"][:300], f"{r['reward']:.3f}"] for r in shown],
                    classes={3: "num"},
                )
            )
    return "".join(html)
