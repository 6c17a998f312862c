"""`llmctl report RUN_ROOT`: one HTML page (plus PNGs) that shows a whole run.

It reads only what the stages wrote: each stage directory's `_manifest.json` (funnel, token
counts, lineage), training runs' `metrics.jsonl` (loss curves, reward margins and accuracies) and
the eval results dataset. Charts are matplotlib PNGs beside `index.html` (llmctl.report.charts,
llmctl.utils.plot), so the page opens from disk with no server and no JavaScript.

Every value put into the page is escaped for where it goes: text with `html.escape`, attribute
values (image file names, which come from stage directory names) percent-encoded and then
escaped inside double quotes, so no directory name can add markup or script.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llmctl.errors import UsageError
from llmctl.store.dataset import MANIFEST
from llmctl.store.lock import exclusive_output

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;font-size:.92em}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.fp{font-family:ui-monospace,monospace;font-size:.85em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .muted{color:#777;font-size:.9em} code{background:#f4f4f4;padding:0 .2em}
"""
COMPANION = ".rejected"  # a filter output's removed documents (llmctl.data.rejected): shown with it, not as a stage


def esc(v: Any) -> str:
    """Text content."""
    return html.escape(str(v), quote=True)


def img(name: str, alt: str) -> str:
    """An <img> of a PNG beside index.html: the file name percent-encoded, then escaped, in double quotes."""
    return f'<img src="{esc(quote(name))}" alt="{esc(alt)}">'


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
            from llmctl.store.dataset import fingerprint_file

            fp = fingerprint_file(weights)
    return str(fp or man.get("signature") or "")


def _table(head: list[str], rows: list[list[Any]], classes: dict[int, str] | None = None) -> str:
    def cell(i: int, v: Any) -> str:
        cls = (classes or {}).get(i)
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="num">{v:,}</td>'
        return f'<td class="{cls}">{esc(v)}</td>' if cls else f"<td>{esc(v)}</td>"

    return (
        "<table><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
        + "</table>"
    )


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
        + _table(["stage", "kind", "inputs", "fingerprint"], rows, classes={3: "fp"})
    )


def _results(d: Path, man: dict[str, Any]) -> str:
    from llmctl.store.dataset import Dataset
    from llmctl.utils.formatting import format_value

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
    return _table(["task", "metric", "value", "stderr", "n"], rows, classes={2: "num", 3: "num"})


@exclusive_output(lambda a: a["output"] or Path(a["root"]) / "report", discard_unfinished=True)
def build_report(root: str | Path, output: str | Path | None = None) -> Path:
    """Write ROOT/report/index.html (or OUTPUT/index.html) and its PNGs; return the HTML path."""
    from llmctl.report import charts as charts
    from llmctl.report.moe import moe_section
    from llmctl.utils import plot

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such run directory")
    stages = _stage_dirs(root)
    from llmctl.report.sweep import sweep_dirs, sweep_section

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
        elif kind == "tokens" and isinstance(st.get("mix"), dict):
            from llmctl.report.mix import mix_section

            parts.append(mix_section(name, st, out))
        elif kind == "tokens" and isinstance(st.get("train"), dict):
            png = plot.save(charts.tokens_figure(st), out / f"{name}_tokens.png", dpi=110)
            tab = _table(
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
            from llmctl.report.rl import section as rl_section

            parts.append(rl_section(name, d, out, esc, img, _table))

    for name, d, man in stages:
        if man.get("stage") == "eval" and man.get("shards"):
            parts.append(f"<h2>Evaluation ({esc(name)})</h2>{_results(d, man)}")

    for d in sweeps:
        parts.append(sweep_section(d, out, esc, img, _table))

    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>llmctl report: {esc(root.name)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
