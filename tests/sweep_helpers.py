"""Test helper for the sweep tests: losses sampled from a known scaling law, and a sweep directory
holding a table of given rows (written through the real dataset contract)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmctl.sweep.run import PLAN, SweepConfig, write_table

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def law(p: dict, n, d):
    return p["E"] + p["A"] / np.asarray(n, float) ** p["alpha"] + p["B"] / np.asarray(d, float) ** p["beta"]


def isoflop_rows(
    p: dict, budgets: list[float], sizes: int = 7, span: float = 1.0, noise: float = 0.002, seed: int = 0
) -> list[dict]:
    """IsoFLOP profiles of the law (C = 6 N D), `sizes` N per budget over +-span decades around the law's
    optimum, with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    s = p["alpha"] + p["beta"]
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s)
    rows = []
    for c in budgets:
        centre = g * (c / 6) ** (p["beta"] / s)
        for n in centre * np.logspace(-span, span, sizes):
            d = c / (6 * n)
            loss = float(law(p, n, d) * np.exp(rng.normal(0, noise)))
            rows.append({"budget": c, "params": float(n), "tokens": float(d), "val_loss": loss})
    return rows


def sweep_dir(root: Path, rows: list[dict], vocab_size: int = 512) -> Path:
    """A finished sweep directory whose table holds `rows` (the columns the fits read, the rest filled in)."""
    cfg = SweepConfig(budgets=sorted({r["budget"] for r in rows}))
    root.mkdir(parents=True, exist_ok=True)
    (root / PLAN).write_text(
        json.dumps(
            {"config": {"budgets": cfg.budgets}, "tokens": "", "tokenizer": "", "vocab_size": vocab_size, "points": []}
        )
    )
    full = [
        {
            "point": f"p{i}",
            "flops": r["budget"],
            "n_layer": 1,
            "d_model": 16,
            "n_head": 1,
            "flops_per_token": 6.0 * r["params"],
            "steps": 1,
            "batch_tokens": 1,
            "train_loss": r["val_loss"],
            "seconds": 0.0,
            **r,
            "params": int(r["params"]),
            "tokens": int(r["tokens"]),
        }
        for i, r in enumerate(rows)
    ]
    write_table(root, cfg, full, inputs=[])
    return root
