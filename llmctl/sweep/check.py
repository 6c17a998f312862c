"""`llmctl sweep check SWEEP`: train the predicted-optimal shape at the predicted budget, compare.

The run is an ordinary pretrain run in SWEEP/check/NAME, trained exactly as the grid's points
(same data, schedule shape, learning rate and seed; its steps from C* / F), so re-running resumes
it. SWEEP/check.json records predicted and actual loss and the relative error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.config import from_dict
from llmctl.store.dataset import atomic_write_json
from llmctl.store.lock import exclusive_output
from llmctl.sweep.fit import read_fit, read_plan
from llmctl.sweep.grid import Point
from llmctl.sweep.run import SweepConfig, point_task, run_point

CHECK = "check.json"


@exclusive_output("root")
def check_sweep(root: str | Path) -> dict[str, Any]:
    root = Path(root).absolute()
    plan, fit = read_plan(root), read_fit(root)
    cfg = from_dict(SweepConfig, plan["config"])
    pred = fit["prediction"]
    point = Point(**pred["point"])
    row = run_point(point_task(point, cfg, plan["tokens"], plan["tokenizer"], root, where="check", threads=cfg.threads))
    actual = row["val_loss"]
    out = {
        "budget": pred["budget"],
        "point": point.to_dict(),
        "predicted": pred["loss"],
        "predicted_ci": pred["loss_ci"],
        "predicted_approach2": pred["loss_approach2"],
        "actual": actual,
        "relative_error": (pred["loss"] - actual) / actual,
        "seconds": row["seconds"],
        "run": str(root / "check" / point.name),
    }
    atomic_write_json(root / CHECK, out)
    return out
