"""`llmctl eval`: load the model once, run each task, write the results dataset.

The results are an llmctl dataset of stage "eval", one row per (task, metric): `value`,
`stderr` (null where none is defined), `n` (what the metric averages over: items, tokens or
bytes). Each task is one resumable task of the dataset contract, so an interrupted eval re-runs
only the tasks it had not finished; `batch_size` and `device` are runtime fields (they do not
change the numbers, see `llmctl.eval.lm`), so a re-run with another batch size resumes.

Per-item output (lm-eval's `--log_samples`): `mc`, `exact_match`, `perplexity` and `prefs` also
write RESULTS/_samples/TASK, a dataset of its own (Parquet shard + `_manifest.json`, stage
`eval_samples`, the eval's inputs as lineage) with one row per question, problem, document or
pair: the request, its log-likelihoods or output, the pick and the gold answer. The leading `_`
keeps it out of readers of the results: pyarrow, pandas and duckdb skip `_`-prefixed paths, so
`pd.read_parquet(RESULTS)` is the results table and `pd.read_parquet(RESULTS/_samples/mc)` the items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.config import runtime
from llmctl.errors import UsageError
from llmctl.eval.tasks import contamination, degeneration, exact_match, mc, perplexity, prefs
from llmctl.eval.tasks.prefs import PrefsConfig, WinrateConfig
from llmctl.store.lock import exclusive_output

SAMPLES_DIR = "_samples"


@dataclass
class Samples:
    """A task's per-item rows and their schema."""

    schema: pa.Schema
    rows: list[dict[str, Any]]


TASKS = ("perplexity", "mc", "exact_match", "degeneration", "contamination", "prefs", "winrate")
NO_LM_TASKS = ("contamination", "prefs")  # these never load MODEL as a language model
RESULT_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
    ]
)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["perplexity"])
    model: str = ""
    tokenizer: str = ""  # override the checkpoint's tokenizer dir (vocab must match)
    perplexity: perplexity.PerplexityConfig = field(default_factory=perplexity.PerplexityConfig)
    mc: mc.MCConfig = field(default_factory=mc.MCConfig)
    exact_match: exact_match.ExactMatchConfig = field(default_factory=exact_match.ExactMatchConfig)
    degeneration: degeneration.DegenerationConfig = field(default_factory=degeneration.DegenerationConfig)
    contamination: contamination.ContaminationConfig = field(default_factory=contamination.ContaminationConfig)
    prefs: PrefsConfig = field(default_factory=PrefsConfig)
    winrate: WinrateConfig = field(default_factory=WinrateConfig)
    batch_size: int = runtime(8)
    device: str = runtime("cpu")
    progress: bool | None = runtime(None)


class TaskProgress:
    """One rich bar per task: requests done, requests/s and tokens/s."""

    def __init__(self, enabled: bool | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from llmctl.utils.progress import console

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


# The data each task reads, and the flag that gives it (no task falls back to a hidden default path).
REQUIRED = {
    "perplexity": [("perplexity.data", "--ppl-data")],
    "mc": [("mc.data", "--mc-data")],
    "exact_match": [("exact_match.data", "--em-data")],
    "degeneration": [("degeneration.prompts", "--prompts")],
    "contamination": [("contamination.train", "--train-data"), ("contamination.data", "--items")],
    "prefs": [("prefs.data", "--prefs-data")],
    "winrate": [("winrate.prompts", "--prompts"), ("winrate.baseline", "--baseline")],
}


def _run_task(name: str, lm: Any, cfg: EvalConfig, progress: TaskProgress) -> tuple[list, list]:
    if name == "prefs":
        return prefs.run_prefs(cfg.model, cfg.prefs, cfg.batch_size, progress, cfg.device, lm=lm)
    if name == "winrate":
        return prefs.run_winrate(lm, cfg.winrate, cfg.batch_size, progress, cfg.device)
    run = {
        "perplexity": perplexity.run,
        "mc": mc.run,
        "exact_match": exact_match.run,
        "degeneration": degeneration.run,
        "contamination": contamination.run,
    }[name]
    return run(lm, getattr(cfg, name), cfg.batch_size, progress)


@exclusive_output("output", discard_unfinished=True)
def run_eval(model: str | Path, output: str | Path, cfg: EvalConfig, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate `model` on `cfg.tasks`; returns the results manifest (rows in manifest['stats']['results'])."""
    from llmctl.eval.lm import load_lm
    from llmctl.store.dataset import StageOutput

    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown or not cfg.tasks:
        raise UsageError(f"unknown eval task {unknown[0] if unknown else '(none)'}; choose from {', '.join(TASKS)}")
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    tasks = list(dict.fromkeys(cfg.tasks))
    for t in tasks:
        for key, flag in REQUIRED.get(t, ()):
            section, field_name = key.split(".")
            if not getattr(getattr(cfg, section), field_name):
                raise UsageError(f"task {t} needs {flag} (or --set {key}=...)")
    if "exact_match" in tasks and cfg.exact_match.shots and not cfg.exact_match.fewshot_data:
        raise UsageError("exact_match with shots > 0 needs --set exact_match.fewshot_data=FILE.jsonl")
    cfg.model = str(Path(model).resolve())
    needs_model = [t for t in tasks if t not in NO_LM_TASKS]
    lm = load_lm(model, cfg.device, cfg.tokenizer or None) if needs_model else None
    inputs = [lm.lineage()] if lm else []
    if "prefs" in tasks and not inputs:
        inputs = [model_lineage(model)]
    fresh = not Path(output).exists()
    out = StageOutput(Path(output), "eval", cfg, inputs=inputs, overwrite=overwrite)
    if out.complete:
        return out.manifest
    try:
        return _run_tasks(out, tasks, lm, cfg)
    except UsageError:
        if fresh and not any(out.task_done(t) for t in tasks):  # bad input before any result: leave nothing
            import shutil

            shutil.rmtree(output, ignore_errors=True)
        raise


def model_lineage(path: str | Path, stage: str = "model") -> dict[str, Any]:
    """Path and weights fingerprint of a model directory (an llmctl run dir: its latest checkpoint)."""
    from llmctl.eval.lm import is_hf_dir
    from llmctl.model.checkpoint import resolve_checkpoint
    from llmctl.store.dataset import fingerprint_file

    p = Path(path) if is_hf_dir(path) else resolve_checkpoint(path)
    w = sorted(p.glob("*.safetensors"))
    return {"path": str(p.resolve()), "stage": stage, "fingerprint": fingerprint_file(w[0]) if w else ""}


def _run_tasks(out: Any, tasks: list[str], lm: Any, cfg: EvalConfig) -> dict[str, Any]:
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
    return out.finalize(tasks, RESULT_SCHEMA, stats={"results": all_rows, "task_inputs": extra_inputs}, timings=timings)


def write_samples(out: Any, task: str, samples: Samples, lineage: list, cfg: EvalConfig) -> Path:
    """RESULTS/_samples/TASK as a dataset of its own (shard, then manifest)."""
    from llmctl.store.dataset import StageOutput

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
    import math

    err = r.get("stderr")
    err = None if err is None or (isinstance(err, float) and math.isnan(err)) else float(err)
    return {"task": r["task"], "metric": r["metric"], "value": float(r["value"]), "stderr": err, "n": int(r["n"])}
