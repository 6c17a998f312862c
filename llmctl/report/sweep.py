"""The report's scaling-law section: a sweep's points, its fits beside Chinchilla's, its plots, and the
prediction with its check (read from SWEEP/table, fit.json, plots/ and check.json; nothing is refitted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmctl.errors import UsageError
from llmctl.report.html import esc, img, table
from llmctl.sweep.run import PLAN, read_table


def sweep_dirs(root: Path) -> list[Path]:
    """ROOT itself when it is a sweep, else its sweep subdirectories."""
    if (root / PLAN).is_file():
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / PLAN).is_file())


def sweep_section(d: Path, out: Path) -> str:
    """HTML for one sweep: its points, fits, plots (copied into OUT) and prediction."""
    parts = [f"<h2>Scaling-law sweep ({esc(d.name)})</h2>"]
    try:
        rows = read_table(d)
    except UsageError as e:
        return parts[0] + f'<p class="muted">{esc(e)}</p>'
    parts.append(
        table(
            ["budget C", "shape", "N", "D (tokens)", "tokens/param", "val loss"],
            [
                [
                    f"{r['budget']:.3g}",
                    f"{r['n_layer']} x {r['d_model']}",
                    r["params"],
                    r["tokens"],
                    f"{r['tokens'] / r['params']:.1f}",
                    f"{r['val_loss']:.4f}",
                ]
                for r in rows
            ],
            classes={2: "num", 3: "num", 4: "num", 5: "num"},
        )
    )
    fit_path = d / "fit.json"
    if not fit_path.is_file():
        return "".join(parts) + f'<p class="muted">Not fitted yet: <code>llmctl sweep fit {esc(d)}</code>.</p>'
    fit = json.loads(fit_path.read_text())
    a2, a3, p = fit["approach2"], fit["approach3"], fit["prediction"]
    parts.append(
        table(
            ["fit", "a (N_opt ~ C^a)", "b (D_opt ~ C^b)", "law"],
            [
                ["approach 2 (IsoFLOP)", f"{a2['a']:.3f}", f"{a2['b']:.3f}", ""],
                [
                    "approach 3 (parametric)",
                    f"{a3['allocation']['a']:.3f}",
                    f"{a3['allocation']['b']:.3f}",
                    f"E {a3['E']:.3f}, A {a3['A']:.4g}, B {a3['B']:.4g}, alpha {a3['alpha']:.3f}, beta {a3['beta']:.3f}",
                ],
                ["Chinchilla (Hoffmann et al.)", "0.49", "0.51", "E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28"],
            ],
        )
    )
    for key, name in (fit.get("plots") or {}).items():
        src = d / "plots" / name
        if src.is_file():
            dst = out / f"{d.name}_{name}"
            shutil.copyfile(src, dst)
            parts.append(img(dst.name, f"{d.name} {key}"))
    pt = p["point"]
    text = (
        f"Prediction at C {p['budget']:.3g}: {pt['n_layer']} layers x d_model {pt['d_model']} (N {pt['params']:,}), "
        f"{pt['tokens']:,} tokens: val loss {p['loss']:.4f}"
    )
    check = d / "check.json"
    if check.is_file():
        c = json.loads(check.read_text())
        text += f"; trained: {c['actual']:.4f} (error {100 * c['relative_error']:+.2f}%)."
    else:
        text += f" (not checked: <code>llmctl sweep check {esc(d)}</code>)."
    parts.append(f"<p>{esc(text) if check.is_file() else text}</p>")
    return "".join(parts)
