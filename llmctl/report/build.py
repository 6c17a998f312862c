"""`llmctl report RUN_ROOT`: one HTML page (plus PNGs) that shows a whole run.

It reads only what the stages wrote: each stage directory's `_manifest.json` (funnel, token
counts, lineage), training runs' `metrics.jsonl` (loss curves, reward margins and accuracies) and
the eval results dataset. Charts are matplotlib PNGs beside `index.html` (llmctl.report.charts,
llmctl.utils.plot), so the page opens from disk with no server and no JavaScript.
Every value is escaped for where it goes (llmctl.report.html).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.report import charts
from llmctl.report.filter_stats import filter_stats_section
from llmctl.report.html import CSS, esc, img, table
from llmctl.report.mix import mix_section
from llmctl.report.moe import moe_section
from llmctl.report.rl import rl_section
from llmctl.report.sweep import sweep_dirs, sweep_section
from llmctl.store.dataset import MANIFEST, Dataset, fingerprint_file
from llmctl.store.lock import exclusive_output
from llmctl.utils import plot
from llmctl.utils.formatting import format_value

COMPANION = ".rejected"  # a filter output's removed documents (llmctl.data.rejected): shown with it, not as a stage


def _stage_dirs(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(name, dir, manifest) of every finished stage under ROOT, in the order they finished."""
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        m = d / MANIFEST
        if m.is_file():
            man = json.loads(m.read_text())
            if str(man.get("stage", "")).endswith(COMPANION):
                continue
            found.append((d.name, d, man))
    order = {}
    state = root / "_pipeline"
    if state.is_dir():
        order = {p.stem: p.stat().st_mtime for p in state.glob("*.json")}
    return sorted(found, key=lambda x: (order.get(x[0], float("inf")), (x[1] / MANIFEST).stat().st_mtime))


def _inputs(man: dict[str, Any]) -> list[dict[str, Any]]:
    """What a stage read: its manifest's inputs, plus, for eval, the data each task read."""
    inp = man.get("inputs") or []
    if isinstance(inp, dict):  # e.g. quality: {"positive": [...], "negative": [...]}
        inp = [i for v in inp.values() for i in (v if isinstance(v, list) else [v])]
    extra = (man.get("stats") or {}).get("task_inputs") or []
    return [i for i in [*inp, *extra] if isinstance(i, dict)]


def _fingerprint(d: Path, man: dict[str, Any]) -> str:
    """A dataset's fingerprint; for a training run, its final checkpoint's (what later stages record)."""
    fp = man.get("fingerprint") or ""
    if not fp:
        ck = (man.get("stats") or {}).get("checkpoint")
        weights = Path(ck) / "model.safetensors" if ck else None
        if weights is not None and weights.is_file():
            fp = fingerprint_file(weights)
    return str(fp or man.get("signature") or "")


def _lineage(stages: list[tuple[str, Path, dict[str, Any]]]) -> str:
    by_path = {str(d.resolve()): name for name, d, _ in stages}
    rows = []
    for name, d, man in stages:
        ins = []
        for i in _inputs(man):
            p = str(i.get("path", ""))
            ref = next((n for sp, n in by_path.items() if p == sp or p.startswith(sp + "/")), None)
            ins.append(f"{ref} (stage)" if ref else Path(p).name)
        rows.append([name, man.get("stage", "?"), ", ".join(dict.fromkeys(ins)) or "-", _fingerprint(d, man)[:16]])
    return (
        "<h2>Lineage</h2><p>Each stage with what it read (its manifest's inputs with their fingerprints; for "
        "eval, the data of each task too), from the crawl files to the final checkpoint. The fingerprint is "
        "the output's (a training run: its final checkpoint's weights).</p>"
        + table(["stage", "kind", "inputs", "fingerprint"], rows, classes={3: "fp"})
    )


def _results(d: Path, man: dict[str, Any]) -> str:
    res = list(Dataset(d, man).iter_rows())
    rows = [
        [
            r["task"],
            r["metric"],
            format_value(r["metric"], r["value"]),
            "" if r.get("stderr") is None else f"{r['stderr']:.4f}",
            r["n"],
        ]
        for r in res
    ]
    return table(["task", "metric", "value", "stderr", "n"], rows, classes={2: "num", 3: "num"})


@exclusive_output(lambda a: a["output"] or Path(a["root"]) / "report", discard_unfinished=True)
def build_report(root: str | Path, output: str | Path | None = None) -> Path:
    """Write ROOT/report/index.html (or OUTPUT/index.html) and its PNGs; return the HTML path."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such run directory")
    stages = _stage_dirs(root)
    sweeps = sweep_dirs(root)
    if not stages and not sweeps:
        raise UsageError(f"{root}: holds no finished stage (no */{MANIFEST})")
    out = Path(output) if output else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<h1>llmctl run: {esc(root.name)}</h1>",
        f'<p class="muted">{esc(root.resolve())} · {len(stages)} stages</p>',
        _lineage(stages),
    ]

    for name, d, man in stages:
        kind, st = man.get("stage"), man.get("stats") or {}
        if kind == "filter" and st.get("funnel"):
            png = plot.save(charts.funnel_figure(st["funnel"]), out / f"{name}_funnel.png", dpi=110)
            rej = st.get("rejected")
            where = (
                (
                    f'<p class="muted">Removed documents, each with its rule: the dataset '
                    f"<code>{esc(rej['dataset'])}</code> beside <code>{esc(name)}</code> "
                    f"({rej['documents']:,} documents).</p>"
                )
                if isinstance(rej, dict)
                else ""
            )
            parts.append(f"<h2>Filter funnel ({esc(name)})</h2>{img(png.name, 'filter funnel')}{where}")
            parts.append(filter_stats_section(name, d))
        elif kind == "tokens" and isinstance(st.get("mix"), dict):
            parts.append(mix_section(name, st, out))
        elif kind == "tokens" and isinstance(st.get("train"), dict):
            png = plot.save(charts.tokens_figure(st), out / f"{name}_tokens.png", dpi=110)
            tab = table(
                ["split", "documents", "tokens", "bytes", "bytes/token"],
                [
                    [s, st[s]["documents"], st[s]["tokens"], st[s]["bytes"], st[s].get("bytes_per_token") or 0.0]
                    for s in ("train", "val")
                    if isinstance(st.get(s), dict)
                ],
            )
            parts.append(f"<h2>Tokens ({esc(name)})</h2>{img(png.name, 'tokens per split')}{tab}")

    runs = [(name, d) for name, d, _ in stages if (d / "metrics.jsonl").is_file()]
    if runs:
        parts.append("<h2>Training</h2>")
        for name, d in runs:
            try:
                png = plot.save(plot.loss_figure([d]), out / f"{name}_loss.png")
                parts.append(f"<h3>{esc(name)}: loss</h3>{img(png.name, name + ' loss')}")
            except (UsageError, KeyError, ZeroDivisionError, IndexError):
                pass
            fig = plot.prefs_figure(d)
            if fig is not None:
                png = plot.save(fig, out / f"{name}_margins.png")
                parts.append(f"<h3>{esc(name)}: reward margins and accuracy</h3>{img(png.name, name + ' margins')}")
            parts.append(moe_section(name, d, out))  # MoE runs: expert load over training
            parts.append(rl_section(name, d, out))

    for name, d, man in stages:
        if man.get("stage") == "eval" and man.get("shards"):
            parts.append(f"<h2>Evaluation ({esc(name)})</h2>{_results(d, man)}")

    for d in sweeps:
        parts.append(sweep_section(d, out))

    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>llmctl report: {esc(root.name)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
