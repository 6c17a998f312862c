"""A training run directory: fresh, resumed, complete, or refused (the data stages' contract, for training).

Shared by pretrain, sft, reward and dpo. RUN/_run.json holds the run's config and the
fingerprints of its inputs; RUN/_manifest.json, written when the last step is done, is the
completion marker. Re-running the same command continues the run from its latest checkpoint,
as a data stage resumes its unfinished shards (`--resume` is accepted and means the same); on a
finished run it reports the run complete and rewrites nothing; with a different config or input
it refuses, naming what changed, unless `--overwrite` (which, as for data stages, replaces
another run's output and resumes or reports the same run's).

Nothing is written before the first optimizer step is done (`RunPlan.begin`, called by the
loop): a set-up error, or one in the first step (a foreign tokenizer, a bad preset, more
sequence than the data holds, a batch smaller than the micro-batch) leaves the directory exactly
as it was, and with `--overwrite` the old run is removed only then.

On start, what a killed run can leave in checkpoints/ is cleaned: temporary checkpoints
(`.step_N.tmp-PID`), checkpoints set aside by a replacement (`.step_N.old-PID`, put back when
its replacement never landed) or a rotation (`.step_N.del-PID`), and any `step_N` without the
manifest a checkpoint gets last.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.config import output_fields
from llmctl.errors import UsageError
from llmctl.model.checkpoint import TRAIN_STATE, weights_file
from llmctl.store.dataset import MANIFEST, RUN_STATE, atomic_write_json, is_llmctl_scaffold
from llmctl.store.integrity import read_state
from llmctl.store.lock import exclusive_output, writer_lock
from llmctl.store.manifest import write_manifest
from llmctl.train import distributed as D
from llmctl.train.loop import CHECKPOINTS
from llmctl.utils.progress import note

RECIPE_MODEL_KEYS = ("qk_norm", "mlp_act", "zero_init_proj", "logit_softcap")
_SIDE = re.compile(r"^\.(step_\d+)\.(tmp|old|del)-\d+$")


@dataclass
class RunPlan:
    """What a run does with its directory: `fresh`, `resume` (same config and inputs) or `complete`."""

    path: Path
    status: str
    state: dict[str, Any]
    replace: bool = False  # --overwrite of another run: its files go when the first step is done
    manifest: dict[str, Any] | None = None
    cleaned: list[str] = field(default_factory=list)

    def begin(self) -> None:
        """Called once, on rank 0, when the first step is done: replace an old run, record this one."""
        if self.replace:
            shutil.rmtree(self.path, ignore_errors=True)
            self.replace = False
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / RUN_STATE).is_file():
            atomic_write_json(self.path / RUN_STATE, self.state)


def run_state(stage: str, cfg: Any, inputs: list[dict]) -> dict[str, Any]:
    config = output_fields(cfg)
    train = config.get("train")
    if isinstance(train, dict) and not (train.get("lora") or {}).get("r"):
        train.pop("lora", None)  # LoRA off: the state runs recorded before train.lora existed, so they resume
    if isinstance(train, dict) and train.get("optimizer") == "adamw":  # likewise for the optimizer choice
        for k in [k for k in train if k == "optimizer" or k.startswith("muon_")]:
            train.pop(k)
    for section, keys in (("train", ("embed_lr", "head_lr")), ("model", RECIPE_MODEL_KEYS)):
        sec = config.get(section)
        for k in keys if isinstance(sec, dict) else ():
            if sec.get(k, 0) is None:  # unset: recorded as runs were before these options existed
                sec.pop(k)
    state = {"stage": stage, "config": config, "inputs": [i["fingerprint"] for i in inputs]}
    return json.loads(json.dumps(state, default=str))  # as it reads back from _run.json


def prepare_run_dir(run_dir: Path, stage: str, cfg: Any, inputs: list[dict], overwrite: bool) -> RunPlan:
    """Decide what to do with RUN (call on rank 0 only); writes nothing but the clean-up of checkpoints/."""
    run_dir = Path(run_dir)
    state = run_state(stage, cfg, inputs)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a directory")
    has_run = any((run_dir / n).exists() for n in (RUN_STATE, MANIFEST, CHECKPOINTS))
    if not has_run:
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite and not is_llmctl_scaffold(run_dir):
            raise UsageError(f"{run_dir}: directory is not empty and holds no llmctl run; choose another path")
        return RunPlan(run_dir, "fresh", state, replace=run_dir.is_dir() and any(run_dir.iterdir()))
    recorded = read_state(run_dir / RUN_STATE, overwrite) if (run_dir / RUN_STATE).is_file() else None
    manifest = read_state(run_dir / MANIFEST, overwrite) if (run_dir / MANIFEST).is_file() else None
    if not recorded:
        recorded = (manifest or {}).get("run_state")
    if overwrite and recorded != state:  # --overwrite replaces another run; the same run resumes, as data stages do
        return RunPlan(run_dir, "fresh", state, replace=True)
    if recorded is None:
        raise UsageError(f"{run_dir}: holds a training run without its {RUN_STATE}; pass --overwrite to replace it")
    if recorded != state:
        changed = [k for k in state["config"] if state["config"][k] != recorded.get("config", {}).get(k)]
        if recorded.get("stage") != state["stage"]:
            changed.insert(0, f"stage {recorded.get('stage')} -> {stage}")
        raise UsageError(
            f"{run_dir}: holds a run with a different config or input (changed: "
            f"{', '.join(changed[:4]) or 'inputs'}); pass --overwrite to replace it, or choose another run dir"
        )
    if manifest is not None:
        return RunPlan(run_dir, "complete", state, manifest=manifest)
    return RunPlan(run_dir, "resume", state, cleaned=clean_checkpoints(run_dir))


def _complete(ckpt: Path) -> bool:
    return all((ckpt / n).is_file() for n in (MANIFEST, TRAIN_STATE)) and weights_file(ckpt).is_file()


def clean_checkpoints(run_dir: Path) -> list[str]:
    """Remove what a killed run left half-done in RUN/checkpoints; returns the names removed."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.iterdir()):
        m = _SIDE.match(p.name)
        if m and m.group(2) == "old" and not (d / m.group(1)).exists() and _complete(p):
            p.rename(d / m.group(1))  # a replacement that never landed: the old checkpoint goes back
            continue
        if m or (p.name.startswith("step_") and p.is_dir() and not _complete(p)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    if removed:
        note(f"{d}: removed {len(removed)} unfinished checkpoint(s) of an interrupted run: {', '.join(removed)}")
    return removed


@dataclass
class TrainingRun:
    """A run directory held for one invocation (see `training_run`)."""

    path: Path
    status: str  # fresh | resume | complete
    plan: RunPlan | None  # rank 0 only
    summary: dict[str, Any] | None = None  # complete: the finished run's summary

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def resume(self) -> bool:
        return self.status == "resume"

    def begin(self) -> None:
        if self.plan is not None:
            self.plan.begin()

    def finish(self, summary: dict[str, Any], manifest: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
        """Write RUN/_manifest.json (rank 0) once the last step is done; returns the summary."""
        if self.plan is not None and summary["finished"]:
            write_manifest(self.path, {**manifest, "model": model, "stats": summary, "run_state": self.plan.state})
        D.barrier()
        return summary


@contextlib.contextmanager
def training_run(
    stage: str, run_dir: str | Path, cfg: Any, inputs: list[dict], overwrite: bool
) -> Iterator[TrainingRun]:
    """Hold RUN's writer lock (rank 0) and decide fresh / resume / complete; every rank gets the decision,
    or the same one-line error."""
    d = D.info()
    path = Path(run_dir)
    with contextlib.ExitStack() as stack:
        plan, err = None, None
        if d.master:
            try:
                stack.enter_context(writer_lock(path))
                plan = prepare_run_dir(path, stage, cfg, inputs, overwrite)
            except UsageError as e:
                err = e
        status, msg, done = D.broadcast_object(
            (
                plan.status if plan else None,
                str(err) if err else None,
                plan.manifest.get("stats") if plan and plan.manifest else None,
            )
        )
        if err is not None:
            raise err
        if msg is not None:
            raise UsageError(msg)
        if status == "complete" and d.master:
            note(f"{path}: already complete (same config and inputs); nothing to do")
        yield TrainingRun(path, status, plan, {**(done or {}), "complete": True} if status == "complete" else None)


def training_stage(param: str = "run_dir") -> Callable:
    """Decorate a training stage so that rank 0 holds RUN's writer lock (RUN: the argument `param`)
    from the stage's first line: a second run into RUN is refused with one line before it loads a
    model or reads data. `training_run` takes the same lock again (it is re-entrant); under
    torchrun the other ranks wait for rank 0's decision there."""

    def deco(fn: Callable) -> Callable:
        locked = exclusive_output(param)(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return (locked if int(os.environ.get("RANK", "0")) == 0 else fn)(*args, **kwargs)

        return wrapper

    return deco
