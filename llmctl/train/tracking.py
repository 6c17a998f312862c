"""Experiment trackers a training run can also log to, in one registry (`TRACKERS`).

Each gets, on rank 0 only, the run's resolved config and lineage once (`start`), every metrics
record with the same names as metrics.jsonl (`log`), and `close`. `tensorboard` writes event files
to RUN/tensorboard/; `wandb` logs an offline run to RUN/wandb/ (no account needed; `wandb sync`
uploads it later) unless WANDB_MODE says otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError


def _scalars(rec: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }


class TensorBoard:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # tensorboard: only a run that asks for it

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def start(self, config: dict[str, Any], lineage: dict[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        self.writer.add_text("lineage", "```\n" + json.dumps(lineage, indent=2, default=str) + "\n```", 0)

    def log(self, rec: dict[str, Any]) -> None:
        for k, v in _scalars(rec).items():
            self.writer.add_scalar(k, v, int(rec["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path):
        import wandb  # wandb: only a run that asks for it

        self.wandb = wandb
        self.run_dir = run_dir
        self.run = None

    def start(self, config: dict[str, Any], lineage: dict[str, Any]) -> None:
        (self.run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            dir=str(self.run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            project=os.environ.get("WANDB_PROJECT", "llmctl"),
            name=self.run_dir.name,
            config={**config, "lineage": lineage},
            reinit="finish_previous",
        )

    def log(self, rec: dict[str, Any]) -> None:
        self.run.log(_scalars(rec), step=int(rec["step"]))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


TRACKERS: dict[str, Callable[[Path], Any]] = {"tensorboard": TensorBoard, "wandb": WandB}


def parse_trackers(spec: str) -> list[str]:
    """`"tensorboard,wandb"` -> the names, each checked against the registry."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in TRACKERS:
            raise UsageError(f"unknown --log-to {n!r}; choose from {', '.join(TRACKERS)}")
    return names


class Trackers:
    """The trackers named in `spec`, opened on the first `log` (after the run dir exists)."""

    def __init__(self, spec: str, run_dir: Path, config: dict[str, Any], lineage: dict[str, Any]):
        self.names = parse_trackers(spec)
        self.run_dir, self.config, self.lineage = run_dir, config, lineage
        self.open: list[Any] = []

    def log(self, rec: dict[str, Any]) -> None:
        if self.names and not self.open:
            for n in self.names:
                t = TRACKERS[n](self.run_dir)
                t.start(self.config, self.lineage)
                self.open.append(t)
        for t in self.open:
            t.log(rec)

    def close(self) -> None:
        for t in self.open:
            t.close()
        self.open = []
