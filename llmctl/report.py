"""`llmctl report RUN_ROOT`: one HTML page (plus PNGs) that shows a whole run.

It reads only what the stages wrote: each stage directory's `_manifest.json` (funnel, token
counts, lineage), training runs' `metrics.jsonl` (loss curves, DPO reward margins) and the eval
results dataset. Charts are matplotlib PNGs beside `index.html`, so the page opens from disk with
no server and no JavaScript.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from llmctl.datasets import MANIFEST
from llmctl.errors import UsageError
from llmctl.lock import exclusive_output

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;font-size:.92em}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .muted{color:#777;font-size:.9em} code{background:#f4f4f4;padding:0 .2em}
"""


def _stage_dirs(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(name, dir, manifest) of every finished stage under ROOT, in the order they finished."""
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        m = d / MANIFEST
        if m.is_file():
            man = json.loads(m.read_text())
            found.append((d.name, d, man))
    order = {}
    state = root / "_pipeline"
    if state.is_dir():
        order = {p.stem: p.stat().st_mtime for p in state.glob("*.json")}
    return sorted(found, key=lambda x: (order.get(x[0], float("inf")), (x[1] / MANIFEST).stat().st_mtime))


def _inputs(man: dict[str, Any]) -> list[dict[str, Any]]:
    inp = man.get("inputs") or []
    if isinstance(inp, dict):  # e.g. quality: {"positive": [...], "negative": [...]}
        return [i for v in inp.values() for i in (v if isinstance(v, list) else [v])]
    return [i for i in inp if isinstance(i, dict)]


def _funnel_png(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["row"] for r in rows]
    vals = [r["docs"] for r in rows]
    colors = ["#4c72b0" if lab in ("read", "kept") else ("#999" if lab.startswith("unreadable") else "#dd8452")
              for lab in labels]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    ax.barh(range(len(rows)), vals, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_title("filter funnel: documents read, removed by each rule, kept")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _tokens_png(stats: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in ("train", "val") if isinstance(stats.get(s), dict)]
    fig, ax = plt.subplots(figsize=(5, 3))
    vals = [stats[s]["tokens"] for s in splits]
    ax.bar(splits, vals, color=["#4c72b0", "#55a868"][: len(splits)])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("tokens")
    ax.set_title("tokens per split")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _dpo_png(run: Path, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in recs if "rewards/margins" in r]
    val = [r for r in recs if "val_rewards/margins" in r]
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r["step"] for r in train], [r["rewards/margins"] for r in train], label="train rewards/margins")
    if "rewards/accuracies" in train[0]:
        ax.plot([r["step"] for r in train], [r["rewards/accuracies"] for r in train], alpha=0.6,
                label="train rewards/accuracies")
    if val:
        ax.plot([r["step"] for r in val], [r["val_rewards/margins"] for r in val], "o--", label="held-out margins")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("DPO implicit reward margins (beta * log-ratio chosen - rejected)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int):
            return f'<td class="num">{v:,}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows) + "</table>")


@exclusive_output(lambda a: a["output"] or Path(a["root"]) / "report", discard_unfinished=True)
def build_report(root: str | Path, output: str | Path | None = None) -> Path:
    """Write ROOT/report/index.html (or OUTPUT/index.html) and its PNGs; return the HTML path."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such run directory")
    stages = _stage_dirs(root)
    if not stages:
        raise UsageError(f"{root}: holds no finished stage (no */{MANIFEST})")
    out = Path(output) if output else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    by_path = {str(d.resolve()): name for name, d, _ in stages}
    parts = [f"<h1>llmctl run: {html.escape(root.name)}</h1>",
             f'<p class="muted">{html.escape(str(root.resolve()))} · {len(stages)} stages</p>']

    # lineage
    rows = []
    for name, d, man in stages:
        ins = []
        for i in _inputs(man):
            p = str(i.get("path", ""))
            ref = next((n for sp, n in by_path.items() if p == sp or p.startswith(sp + "/")), None)
            ins.append(f"{ref} (stage)" if ref else Path(p).name)
        fp = man.get("fingerprint") or man.get("signature") or ""
        rows.append([name, man.get("stage", "?"), ", ".join(dict.fromkeys(ins)) or "-", str(fp)[:12]])
    parts.append("<h2>Lineage</h2><p>Each stage with what it read (its manifest's inputs, with fingerprints in the "
                 "manifest), from the crawl files to the final checkpoint.</p>"
                 + _table(["stage", "kind", "inputs", "fingerprint"], rows))

    for name, d, man in stages:
        kind = man.get("stage")
        if kind == "filter" and man.get("stats", {}).get("funnel"):
            png = out / f"{name}_funnel.png"
            _funnel_png(man["stats"]["funnel"], png)
            parts.append(f"<h2>Filter funnel ({html.escape(name)})</h2><img src='{png.name}'>")
        elif kind == "tokens" and isinstance(man.get("stats", {}).get("train"), dict):
            st = man["stats"]
            png = out / f"{name}_tokens.png"
            _tokens_png(st, png)
            tab = _table(["split", "documents", "tokens", "bytes", "bytes/token"],
                         [[s, st[s]["documents"], st[s]["tokens"], st[s]["bytes"], st[s].get("bytes_per_token") or 0.0]
                          for s in ("train", "val") if isinstance(st.get(s), dict)])
            parts.append(f"<h2>Tokens ({html.escape(name)})</h2><img src='{png.name}'>{tab}")

    runs = [(name, d) for name, d, _ in stages if (d / "metrics.jsonl").is_file()]
    if runs:
        from llmctl.plot import plot_runs

        parts.append("<h2>Training</h2>")
        for name, d in runs:
            try:
                png = plot_runs([d], out / f"{name}_loss.png")
                parts.append(f"<h3>{html.escape(name)}: loss</h3><img src='{png.name}'>")
            except (UsageError, KeyError, ZeroDivisionError, IndexError):
                pass
            if _dpo_png(d, out / f"{name}_margins.png"):
                parts.append(f"<h3>{html.escape(name)}: reward margins</h3><img src='{name}_margins.png'>")

    for name, d, man in stages:
        if man.get("stage") == "eval" and man.get("shards"):
            from llmctl.datasets import Dataset

            res = list(Dataset(d, man).iter_rows())
            cols = [c for c in ("task", "metric", "value", "stderr", "n") if res and c in res[0]]
            parts.append(f"<h2>Evaluation ({html.escape(name)})</h2>"
                         + _table(cols, [[r.get(c) if r.get(c) is not None else "" for c in cols] for r in res]))

    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>llmctl report: {html.escape(root.name)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
