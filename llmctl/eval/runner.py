"""`llmctl eval`: load the model once, run each task, write the results dataset.

The results are an llmctl dataset of stage "eval", one row per (task, metric) (`base.RESULT_SCHEMA`).
Each task is one resumable task of the dataset contract, so an interrupted eval re-runs only the
tasks it had not finished; `batch_size` and `device` are runtime fields (they do not change the
numbers, see `llmctl.eval.lm`), so a re-run with another batch size resumes.

A task that returns `Samples` also gets RESULTS/_samples/TASK, a dataset of its own (stage
`eval_samples`, the eval's inputs as lineage) with one row per item; the leading `_` keeps it out
of readers of the results (pyarrow, pandas and duckdb skip `_`-prefixed paths).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmctl.config import runtime
from llmctl.errors import UsageError
from llmctl.eval.base import RESULT_SCHEMA, Samples, model_lineage, path_lineage
from llmctl.eval.lm import load_lm
from llmctl.eval.tasks import TASKS
from llmctl.store.dataset import StageOutput
from llmctl.store.lock import exclusive_output
from llmctl.utils.progress import console

SAMPLES_DIR = "_samples"
LM_EVAL_PREFIX = "lm-eval:"

EvalConfig = make_dataclass(
    "EvalConfig",
    [
        ("tasks", list[str], field(default_factory=lambda: ["perplexity"])),
        ("model", str, field(default="")),
        ("tokenizer", str, field(default="")),  # override the checkpoint's tokenizer dir (vocab must match)
    ]
    + [(t.name, t.config_class(), field(default_factory=t.config_class())) for t in TASKS.values()]
    + [
        ("batch_size", int, runtime(8)),
        ("device", str, runtime("cpu")),
        ("progress", bool | None, runtime(None)),
    ],
)
EvalConfig.__module__ = __name__
EvalConfig.__doc__ = "The eval config: the tasks to run, MODEL's overrides, and one section per task of `TASKS`."


class TaskProgress:
    """One rich bar per task: requests done, requests/s and tokens/s."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = console.is_terminal if enabled is None else enabled
        self._p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[cyan]{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.enabled,
        )
        self._task = None
        self._t0 = 0.0
        self._tokens = 0

    def __enter__(self) -> TaskProgress:
        self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._p.__exit__(*exc)

    def start(self, name: str, total: int) -> None:
        if self._task is not None:
            self._p.update(self._task, visible=True)
        self._task = self._p.add_task(name, total=total, rate="")
        self._t0, self._tokens = time.time(), 0

    def advance(self, n: int, tokens: int = 0) -> None:
        self._tokens += tokens
        dt = max(time.time() - self._t0, 1e-9)
        task = self._p.tasks[-1]
        rate = f"{(task.completed + n) / dt:,.1f}/s" + (f"  {self._tokens / dt:,.0f} tok/s" if self._tokens else "")
        self._p.update(self._task, advance=n, rate=rate)


def _run_task(name: str, lm: Any, cfg: Any, progress: TaskProgress) -> tuple:
    run = TASKS[name].runner()
    return run(lm, getattr(cfg, name), cfg.batch_size, progress, model=cfg.model, device=cfg.device)


@exclusive_output("output", discard_unfinished=True)
def run_eval(model: str | Path, output: str | Path, cfg: Any, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate `model` on `cfg.tasks` (an `EvalConfig`); returns the results manifest (rows in
    manifest['stats']['results']). Bad options raise UsageError before the model loads.
    `lm-eval:NAME[,NAME...]` in `cfg.tasks` runs those lm-evaluation-harness tasks (task `lm_eval`,
    the names go to `cfg.lm_eval.tasks`)."""
    expanded = []
    for t in cfg.tasks:
        if t.startswith(LM_EVAL_PREFIX):
            names = [n.strip() for n in t[len(LM_EVAL_PREFIX) :].split(",") if n.strip()]
            cfg.lm_eval.tasks = list(dict.fromkeys([*cfg.lm_eval.tasks, *names]))
            t = "lm_eval"
        expanded.append(t)
    cfg.tasks = expanded
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown or not cfg.tasks:
        raise UsageError(
            f"unknown eval task {unknown[0] if unknown else '(none)'}; choose from {', '.join(TASKS)}, lm-eval:NAME"
        )
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    tasks = list(dict.fromkeys(cfg.tasks))
    for t in tasks:
        spec, section = TASKS[t], getattr(cfg, t)
        for option in spec.required:
            if not getattr(section, option):
                flag, key = spec.flag(option), f"{t}.{option}"
                raise UsageError(
                    f"task {t} needs {flag} (or --set {key}=...)" if flag else f"task {t} needs --set {key}=..."
                )
    for t in tasks:
        check = TASKS[t].checker()
        if check:
            check(getattr(cfg, t))
    cfg.model = str(Path(model).resolve())
    lm = load_lm(model, cfg.device, cfg.tokenizer or None) if any(TASKS[t].model == "lm" for t in tasks) else None
    inputs = [lm.lineage()] if lm else []
    if not inputs and any(TASKS[t].model == "path" for t in tasks):
        inputs = [model_lineage(model)]
    inputs += task_inputs(tasks, cfg)
    if not overwrite:
        _refuse_changed_inputs(Path(output), inputs)
    fresh = not Path(output).exists()
    out = StageOutput(Path(output), "eval", cfg, inputs=inputs, overwrite=overwrite)
    if out.complete:
        return out.manifest
    try:
        return _run_tasks(out, tasks, lm, cfg)
    except UsageError:
        if fresh and not any(out.task_done(t) for t in tasks):  # bad input before any result: leave nothing
            shutil.rmtree(output, ignore_errors=True)
        raise


def task_inputs(tasks: list[str], cfg: Any) -> list[dict[str, Any]]:
    """A lineage record for every path a task's options name (data files and datasets, reward
    model, baseline, judge, prompts, judge prompt, lm-eval task folder), fingerprinted before
    anything runs: they are part of the output's signature, so results are reused only while every
    input is unchanged."""
    out = []
    for t in tasks:
        section = getattr(cfg, t)
        for f in fields(section) if is_dataclass(section) else ():
            v = getattr(section, f.name)
            if isinstance(v, str) and v and "://" not in v and Path(v).exists():
                out.append({**path_lineage(v), "task": t, "option": f.name})
    return out


def _refuse_changed_inputs(output: Path, inputs: list[dict[str, Any]]) -> None:
    """One line naming the inputs whose content changed since `output` was written from them."""
    state = next((output / n for n in ("_manifest.json", "_run.json") if (output / n).is_file()), None)
    if state is None:
        return
    try:
        old = {
            (i.get("path"), i.get("task"), i.get("option")): i.get("fingerprint")
            for i in json.loads(state.read_text()).get("inputs", [])
        }
    except (OSError, ValueError, AttributeError):
        return
    changed = [
        i["path"]
        for i in inputs
        if old.get((i.get("path"), i.get("task"), i.get("option")), i["fingerprint"]) != i["fingerprint"]
    ]
    if changed:
        raise UsageError(
            f"{output}: holds results of other inputs ({', '.join(dict.fromkeys(changed))} changed since); "
            "pass --overwrite to re-run, or choose another output path"
        )


def _run_tasks(out: Any, tasks: list[str], lm: Any, cfg: Any) -> dict[str, Any]:
    all_rows: list[dict[str, Any]] = []
    extra_inputs: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    with TaskProgress(cfg.progress) as progress:
        for name in tasks:
            relpath = f"{name}.parquet"
            if out.task_done(name):
                rec = out.task_record(name)
                rows, lineage, secs = rec["stats"]["rows"], rec["stats"]["inputs"], rec["seconds"]
            else:
                t0 = time.time()
                rows, lineage, *samples = _run_task(name, lm, cfg, progress)
                secs = round(time.time() - t0, 3)
                files: dict[str, list] = {}
                if samples:
                    write_samples(out, name, samples[0], lineage, cfg)
                    files["samples"] = [{"path": f"{SAMPLES_DIR}/{name}", "task": name, "rows": len(samples[0].rows)}]
                w = out.shard_writer(relpath, RESULT_SCHEMA)
                for r in rows:
                    w.write(_clean(r))
                out.finish_task(
                    name,
                    {"data": [{"path": relpath, **w.close()}], **files},
                    stats={"rows": [_clean(r) for r in rows], "inputs": lineage},
                    seconds=secs,
                )
            all_rows += [_clean(r) for r in rows]
            extra_inputs += lineage
            timings[f"{name}_seconds"] = secs
    core, core_tasks = core_row(all_rows)
    if core:
        all_rows.append(core)
        w = out.shard_writer("core.parquet", RESULT_SCHEMA)
        w.write(core)
        out.finish_task("core", {"data": [{"path": "core.parquet", **w.close()}]})
        tasks = [*tasks, "core"]
    return out.finalize(
        tasks,
        RESULT_SCHEMA,
        stats={"results": all_rows, "task_inputs": extra_inputs, "core_tasks": core_tasks},
        timings=timings,
    )


def core_row(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str]]:
    """The `core` summary over the multiple-choice tasks that ran (those with `acc` and `chance`
    rows, lm-eval's `acc,none` included): the mean of (acc - chance) / (1 - chance), as nanochat's
    CORE centres each task by its chance level; and the tasks it averaged."""
    acc, chance = {}, {}
    for r in rows:
        if r["metric"] in ("acc", "acc,none"):
            acc[r["task"]] = r["value"]
        elif r["metric"] == "chance":
            chance[r["task"]] = r["value"]
    names = [t for t in acc if t in chance and chance[t] < 1]
    if not names:
        return None, []
    centred = [(acc[t] - chance[t]) / (1 - chance[t]) for t in names]
    return {
        "task": "core",
        "metric": "centered_acc",
        "value": sum(centred) / len(centred),
        "stderr": None,
        "n": len(names),
    }, names


def write_samples(out: Any, task: str, samples: Samples, lineage: list, cfg: Any) -> Path:
    """RESULTS/_samples/TASK as a dataset of its own (shard, then manifest)."""
    so = StageOutput(
        out.path / SAMPLES_DIR / task, "eval_samples", getattr(cfg, task), inputs=out.inputs + lineage, overwrite=True
    )
    if not so.complete:
        w = so.shard_writer("part-00000.parquet", samples.schema)
        for r in samples.rows:
            w.write(r)
        so.finish_task("part-00000", {"data": [{"path": "part-00000.parquet", **w.close()}]})
        so.finalize(["part-00000"], samples.schema, stats={"task": task, "items": len(samples.rows)})
    return so.path


def _clean(r: dict[str, Any]) -> dict[str, Any]:
    err = r.get("stderr")
    err = None if err is None or (isinstance(err, float) and math.isnan(err)) else float(err)
    return {"task": r["task"], "metric": r["metric"], "value": float(r["value"]), "stderr": err, "n": int(r["n"])}
