"""`llmctl report` and `llmctl plot` on small hand-made run roots: escaping, chart labels and axes,
lineage. The whole toy pipeline's report is checked in tests/test_toy_pipeline.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa

from llmctl.report.build import build_report
from llmctl.report.charts import funnel_figure, tokens_figure
from llmctl.store.dataset import StageOutput, fingerprint_file
from llmctl.utils import plot

FUNNEL = [
    {"row": "read", "docs": 12_500, "bytes": 9},
    {"row": "unreadable.non_html", "docs": 4, "bytes": 1},
    {"row": "rejected.c4.bad_words", "docs": 2, "bytes": 1},
    {"row": "rejected.dedup.exact", "docs": 94, "bytes": 1},
    {"row": "kept", "docs": 12_400, "bytes": 6},
]


def training_run(d: Path, stage: str, steps: int = 10, config: dict | None = None) -> Path:
    """A run directory as the training loop leaves it: metrics.jsonl, a checkpoint, _manifest.json."""
    ck = d / "checkpoints" / f"step_{steps:07d}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"weights of " + stage.encode())
    recs = []
    for s in range(1, steps + 1):
        r = {"step": s, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0, "tokens": 512 * s}
        if stage == "dpo":
            r.update({"rewards/margins": 0.1 * s, "rewards/accuracies": min(1.0, 0.5 + s / 40)})
        if stage == "reward":
            r.update({"margin": 0.2 * s, "accuracy": 0.6})
        recs.append(r)
        if s % 5 == 0:
            v = {"step": s, "val_loss": 1.2 / s}
            if stage == "dpo":
                v.update({"val_rewards/margins": 0.05 * s, "val_rewards/accuracies": 0.55})
            recs.append(v)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "_manifest.json").write_text(
        json.dumps(
            {"stage": stage, "config": config or {}, "inputs": [], "stats": {"checkpoint": str(ck), "loss": 0.1}}
        )
    )
    return d


@dataclass
class _Cfg:
    tasks: list


def eval_dataset(d: Path, inputs: list[dict], task_inputs: list[dict]) -> None:
    out = StageOutput(d, "eval", _Cfg(["mc"]), inputs)
    schema = pa.schema(
        [
            ("task", pa.string()),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("stderr", pa.float64()),
            ("n", pa.int64()),
        ]
    )
    w = out.shard_writer("part-00000.parquet", schema)
    rows = [
        {"task": "mc", "metric": "acc", "value": 0.25, "stderr": 0.05, "n": 74},
        {"task": "contamination", "metric": "train_documents", "value": 529.0, "stderr": None, "n": 529},
    ]
    for r in rows:
        w.write(r)
    out.finish_task("mc", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    out.finalize(["mc"], schema, stats={"results": rows, "task_inputs": task_inputs})


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_directory_names_cannot_inject_markup(tmp_path):
    """A stage directory named `a' onerror='...` (or holding a tag) stays text and a file name."""
    root = tmp_path / "run"
    evil = ["a' onerror='alert(1)", 'b" onload="alert(2)', "<img src=x onerror=alert(3)>"]
    for name in evil:
        training_run(root / name, "pretrain")
    page = build_report(root).read_text()
    p = _Page()
    p.feed(page)
    assert [t for t, _ in p.tags].count("script") == 0 and ("img", {"src": "x", "onerror": "alert(3)"}) not in p.tags
    assert all(set(a) <= {"src", "alt"} for t, a in p.tags if t == "img")  # no onerror / onload attribute
    srcs = [unquote(a["src"]) for t, a in p.tags if t == "img"]
    assert len(srcs) == len(evil)
    assert all((root / "report" / s).is_file() for s in srcs)  # each still names its PNG
    assert "&lt;img src=x onerror=alert(3)&gt;" in page


def test_lineage_fingerprints_training_runs_and_lists_evals_data(tmp_path):
    root = tmp_path / "run"
    sft = training_run(root / "sft", "sft")
    data = tmp_path / "mmlu_val.csv"
    data.write_text("q,a,b,c,d,A\n")
    eval_dataset(
        root / "eval",
        [{"path": str(sft / "checkpoints" / "step_0000010"), "fingerprint": "x"}],
        [{"path": str(data), "fingerprint": "y"}],
    )
    page = build_report(root).read_text()
    lineage = page[page.index("<h2>Lineage") : page.index("</table>", page.index("<h2>Lineage"))]
    want = fingerprint_file(sft / "checkpoints" / "step_0000010" / "model.safetensors")[:16]
    assert f'<td class="fp">{want}</td>' in lineage
    eval_row = lineage[lineage.index("<td>eval</td>") :]
    assert "sft (stage)" in eval_row and "mmlu_val.csv" in eval_row
    results = page[page.index("<h2>Evaluation") :]
    assert '<td class="num">529</td>' in results and "529.0000" not in results  # a count is an integer


def test_loss_charts_say_what_each_stage_minimizes(tmp_path):
    labels = {}
    for stage, cfg in (("pretrain", {}), ("sft", {}), ("reward", {}), ("dpo", {"loss_type": "ipo", "beta": 0.1})):
        fig = plot.loss_figure([training_run(tmp_path / stage, stage, config=cfg)])
        labels[stage] = fig.axes[0].get_ylabel()
    assert labels["pretrain"] == "cross-entropy (nats/token)"
    assert labels["sft"].startswith("cross-entropy on response tokens")
    assert labels["reward"].startswith("Bradley-Terry") and "cross-entropy" not in labels["reward"]
    assert labels["dpo"].startswith("DPO loss (ipo)") and "cross-entropy" not in labels["dpo"]


def test_preference_chart_has_margins_and_accuracy_on_separate_axes(tmp_path):
    fig = plot.prefs_figure(training_run(tmp_path / "dpo", "dpo", steps=10))
    top, bottom = fig.axes
    assert "margin" in top.get_ylabel() and "accuracy" in bottom.get_ylabel()
    assert bottom.get_ylim() == (-0.02, 1.02)
    fig.canvas.draw()
    steps = [t for t in bottom.get_xticks() if 1 <= t <= 10]
    assert steps and all(float(t).is_integer() for t in steps)  # no step 2.5
    assert plot.prefs_figure(training_run(tmp_path / "pre", "pretrain")) is None
    reward = plot.prefs_figure(training_run(tmp_path / "rm", "reward"))
    assert "r_chosen - r_rejected" in reward.axes[0].get_ylabel()


def test_funnel_has_its_rejections_on_their_own_axis_and_thousands_separators():
    fig = funnel_figure(FUNNEL)
    totals, rules = fig.axes
    fig.canvas.draw()
    assert [t.get_text() for t in rules.get_yticklabels()] == [r["row"] for r in FUNNEL[1:-1]]
    assert rules.get_xlim()[1] < 200 < totals.get_xlim()[1]  # the rules' bars on their own scale
    assert totals.xaxis.get_major_formatter()(12_000, 0) == "12,000"
    tok = tokens_figure({"train": {"tokens": 277_340}, "val": {"tokens": 23_642}})
    assert tok.axes[0].yaxis.get_major_formatter()(250_000, 0) == "250,000"
