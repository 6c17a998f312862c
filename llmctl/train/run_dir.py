"""A training run directory: fresh, resumed (same config and inputs), or refused.

Shared by pretrain, sft, reward and dpo. While a run trains, RUN/_run.json holds its config and
the fingerprints of its inputs; `_manifest.json` is written when it finishes. `--resume`
continues a run whose config and inputs are unchanged, `--overwrite` replaces it, and anything
else is a one-line error naming what changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmctl.config import output_fields
from llmctl.datasets import MANIFEST, RUN_STATE, atomic_write_json
from llmctl.errors import UsageError
from llmctl.train.loop import CHECKPOINTS

def prepare_run_dir(run_dir: Path, stage: str, cfg: Any, inputs: list[dict], resume: bool, overwrite: bool) -> None:
    """Make RUN ready to train (call on rank 0 only)."""
    state = {"stage": stage, "config": output_fields(cfg), "inputs": [i["fingerprint"] for i in inputs]}
    has_run = any((run_dir / n).exists() for n in (RUN_STATE, MANIFEST, CHECKPOINTS))
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a directory")
    if has_run and overwrite:
        shutil.rmtree(run_dir)
    elif has_run and not resume:
        raise UsageError(f"{run_dir}: holds a training run; pass --resume to continue it or --overwrite to replace it")
    elif has_run:
        old = json.loads((run_dir / RUN_STATE).read_text()) if (run_dir / RUN_STATE).is_file() else {}
        if old and old != state:
            changed = [k for k in state["config"] if state["config"][k] != old.get("config", {}).get(k)]
            raise UsageError(f"{run_dir}: cannot resume with a different config or input (changed: "
                             f"{', '.join(changed) or 'inputs'}); use another run dir or --overwrite")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir}: directory is not empty and holds no llmctl run; choose another path")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MANIFEST).unlink(missing_ok=True)
    atomic_write_json(run_dir / RUN_STATE, state)
