"""`llmctl run PIPELINE.yaml -o ROOT`: a whole run, stage after stage, each a normal llmctl command.

A pipeline file lists stages in order. Each stage is the command line a user would type
(without `llmctl`), where `${name}` stands for the output directory of stage `name`
(ROOT/name) and `${out}` for this stage's own, plus an optional inline `config:` mapping that is
written to ROOT/_configs/STAGE.yaml and passed as `--config`::

    stages:
      - name: filter
        run: filter examples/crawl -o ${out}
        config: {c4: {min_words_per_line: 5}}
      - name: tokenizer
        run: tokenize train ${filter} -o ${out} --vocab-size 2000

A stage is skipped when its output has a manifest and the stage's signature (its resolved
command line, its config, the manifests of the stages it reads and the fingerprints of the files
outside ROOT its command line names) equals the one recorded
when it last succeeded, so an edit to one stage's config re-runs that stage and the ones after
it, and nothing else (a stale stage's old output is replaced: `--overwrite` is passed). The first
failure stops the run, naming the stage. What a stage prints is also kept in
ROOT/_pipeline/STAGE.log (scripts/examples_figures.py builds examples/README.md's figures from them).

Stage effects (`stage_effects`, printed by `llmctl run` at the end): an eval stage is one whose
command is `eval ${MODEL} ...`; a training stage's predecessor is the stage its `--from ${NAME}`
names. Each eval'd stage is compared with its nearest eval'd predecessor on every (task, metric)
both eval stages report with a standard error: before, after, the change and its standard error.
Where both evals kept the metric item by item (a column of that name in RESULTS/_samples/TASK,
whose mean is the reported value) over the same item ids, the change's standard error is the
paired one, the standard error of the mean of the per-item differences (both models answered the
same questions, so what they have in common cancels); otherwise sqrt(stderr_before^2 +
stderr_after^2), the two evaluations taken as independent (conservative when they score the same
items). Each row says which (`paired`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from llmctl.cli.app import app
from llmctl.errors import UsageError
from llmctl.eval.base import mean_stderr
from llmctl.eval.runner import SAMPLES_DIR
from llmctl.store.dataset import MANIFEST, Dataset, atomic_write_json, canonical_json, fingerprint_file
from llmctl.store.lock import exclusive_output
from llmctl.utils.formatting import format_value

_REF = re.compile(r"\$\{([A-Za-z_][\w-]*)\}")
# A stage writes ROOT/NAME: a plain name, so that no stage escapes ROOT (`../x`, `/abs`) or takes
# the run's own entries (`_configs`, `_pipeline`, hidden lock files).
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass
class Stage:
    name: str
    run: str
    config: dict[str, Any] | None = None
    description: str = ""
    refs: list[str] = field(default_factory=list)


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]
    description: str = ""

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise UsageError(
            f"pipeline {self.name!r} has no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})"
        )


def load_pipeline(path: str | Path) -> Pipeline:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"pipeline file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"cannot parse pipeline {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise UsageError(f"pipeline {p}: needs a non-empty 'stages' list")
    stages: list[Stage] = []
    for i, raw in enumerate(data["stages"]):
        if not isinstance(raw, dict) or "name" not in raw or "run" not in raw:
            raise UsageError(f"pipeline {p}: stage {i + 1} needs 'name' and 'run'")
        name = raw["name"]
        if not isinstance(name, str) or not _NAME.match(name) or name == "out":
            raise UsageError(
                f"pipeline {p}: stage name {name!r} must be a letter then letters, digits, '_' or '-' "
                "(it names the stage's folder under the run root; 'out' is reserved)"
            )
        if any(s.name == name for s in stages):
            raise UsageError(f"pipeline {p}: two stages are named {name!r}")
        if not isinstance(raw["run"], str):
            raise UsageError(f"pipeline {p}: stage {name!r}: 'run' must be a command line (a string)")
        if raw.get("config") is not None and not isinstance(raw["config"], dict):
            raise UsageError(f"pipeline {p}: stage {name!r}: 'config' must be a mapping")
        unknown = set(raw) - {"name", "run", "config", "description"}
        if unknown:
            raise UsageError(f"pipeline {p}: stage {raw['name']!r} has unknown key {sorted(unknown)[0]!r}")
        refs = [r for r in _REF.findall(raw["run"]) if r != "out"]
        earlier = {s.name for s in stages}
        for r in refs:
            if r not in earlier:
                raise UsageError(f"pipeline {p}: stage {raw['name']!r} uses ${{{r}}} before a stage of that name ran")
        stages.append(Stage(raw["name"], raw["run"], raw.get("config"), raw.get("description", ""), refs))
    return Pipeline(data.get("name", p.stem), stages, data.get("description", ""))


def stage_args(stage: Stage, root: Path) -> list[str]:
    def sub(m: re.Match) -> str:
        ref = m.group(1)
        return str(root / (stage.name if ref == "out" else ref))

    args = shlex.split(_REF.sub(sub, stage.run))
    if stage.config:
        cfg_path = root / "_configs" / f"{stage.name}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(stage.config, sort_keys=False), encoding="utf-8")
        args += ["--config", str(cfg_path)]
    return args


def _file_inputs(args: list[str], root: Path) -> dict[str, str]:
    """Fingerprints of the files and folders outside ROOT a stage's command line names."""
    out = {}
    for a in args:
        p = Path(a)
        if not p.exists() or root.resolve() in p.resolve().parents or p.resolve() == root.resolve():
            continue
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        out[a] = hashlib.sha256("".join(f"{f}:{fingerprint_file(f)};" for f in files).encode()).hexdigest()
    return out


def _signature(stage: Stage, args: list[str], root: Path) -> str:
    parents = {}
    for ref in stage.refs:
        m = root / ref / MANIFEST
        parents[ref] = hashlib.sha256(m.read_bytes()).hexdigest() if m.is_file() else None
    body = {"args": args, "config": stage.config, "parents": parents, "files": _file_inputs(args, root)}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _state_path(root: Path, stage: Stage) -> Path:
    return root / "_pipeline" / f"{stage.name}.json"


def stage_is_current(stage: Stage, root: Path) -> bool:
    state = _state_path(root, stage)
    if not state.is_file() or not (root / stage.name / MANIFEST).is_file():
        return False
    try:
        recorded = json.loads(state.read_text())["signature"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return False  # a damaged record: the stage is run again
    return recorded == _signature(stage, stage_args(stage, root), root)


class _Tee(io.TextIOBase):
    """sys.stdout that also writes to a stage's log file (a terminal stays a terminal to rich)."""

    def __init__(self, out: Any, log: Any) -> None:
        self._out, self._log = out, log

    def write(self, s: str) -> int:
        self._out.write(s)
        self._log.write(s)
        return len(s)

    def flush(self) -> None:
        self._out.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return self._out.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._out, "encoding", "utf-8")


@exclusive_output("root")
def run_pipeline(
    path: str | Path,
    root: str | Path,
    only: list[str] | None = None,
    until: str | None = None,
    force: bool = False,
    echo=print,
) -> list[dict[str, Any]]:
    """Run the pipeline's stages in order; returns one record per stage (ran / skipped, seconds)."""
    pipe = load_pipeline(path)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    selected = pipe.stages
    if until is not None:
        idx = pipe.stages.index(pipe.stage(until))
        selected = pipe.stages[: idx + 1]
    if only:
        wanted = {pipe.stage(n).name for n in only}
        selected = [s for s in selected if s.name in wanted]
    records = []
    for stage in selected:
        args = stage_args(stage, root)
        if not force and stage_is_current(stage, root):
            echo(f"[{stage.name}] up to date, skipped")
            records.append({"stage": stage.name, "status": "skipped"})
            continue
        missing = [r for r in stage.refs if not (root / r / MANIFEST).is_file()]
        if missing:
            raise UsageError(
                f"stage {stage.name!r} needs stage {missing[0]!r} to have run first (no {root / missing[0] / MANIFEST})"
            )
        signature = _signature(stage, args, root)
        out = root / stage.name
        if force and out.is_dir() and not out.is_symlink():
            # a stage skips an output that is complete for the same config and inputs, so --force
            # starts it from nothing (under the run root's lock; the output is this pipeline's own)
            shutil.rmtree(out)
        elif out.exists():
            args = args + ["--overwrite"]  # stale: its config or inputs changed since it ran
        echo(f"[{stage.name}] llmctl {shlex.join(args)}")
        started = time.time()
        log = _state_path(root, stage).with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(_Tee(sys.stdout, f)):
                rv = app(args, standalone_mode=False)
        except SystemExit as e:
            if e.code not in (0, None):
                raise UsageError(f"stage {stage.name!r} failed (exit code {e.code})") from None
        except Exception as e:  # noqa: BLE001 - every failure stops the run, naming the stage
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"stage {stage.name!r} failed: {msg}") from e
        else:  # without standalone mode Typer returns an Exit's code, and 130 for a Ctrl-C it caught
            if rv == 130:
                raise KeyboardInterrupt
            if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
                raise UsageError(f"stage {stage.name!r} failed (exit code {rv})")
        secs = round(time.time() - started, 2)
        state = _state_path(root, stage)
        state.parent.mkdir(parents=True, exist_ok=True)
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        atomic_write_json(
            state,
            {"stage": stage.name, "args": args, "signature": signature, "seconds": secs, "load_average_1min": load},
        )
        records.append({"stage": stage.name, "status": "ran", "seconds": secs})
    return records


# ----------------------------------------------------------------------------- stage effects


def _ref_arg(args: list[str], i: int) -> str | None:
    """The stage name when args[i] is exactly `${NAME}`, else None."""
    m = _REF.fullmatch(args[i]) if 0 <= i < len(args) else None
    return m.group(1) if m else None


def _item_values(eval_dir: Path, task: str, metric: str, value: float) -> dict[str, float] | None:
    """`metric` item by item from eval_dir's per-item samples of `task` (a numeric column named after the
    metric, keyed by the item's id), or None when they are missing or do not average to `value`."""
    d = eval_dir / SAMPLES_DIR / task
    if not (d / MANIFEST).is_file():
        return None
    rows = list(Dataset.open(d).iter_rows())
    if not rows or "id" not in rows[0] or metric not in rows[0]:
        return None
    vals = {str(r["id"]): r[metric] for r in rows}
    if len(vals) != len(rows) or not all(isinstance(v, (int, float)) for v in vals.values()):
        return None
    vals = {k: float(v) for k, v in vals.items()}
    if abs(sum(vals.values()) / len(vals) - value) > 1e-9 * max(1.0, abs(value)):
        return None
    return vals


def _change_stderr(root: Path, ev_before: str, ev_after: str, b: dict, a: dict) -> tuple[float | None, bool]:
    """The change's standard error and whether it is paired (see the module docstring)."""
    if a["stderr"] is None or b["stderr"] is None:
        return None, False
    items_b = _item_values(root / ev_before, b["task"], b["metric"], b["value"])
    items_a = _item_values(root / ev_after, a["task"], a["metric"], a["value"])
    if items_a is not None and items_b is not None and items_a.keys() == items_b.keys() and len(items_a) > 1:
        return mean_stderr([items_a[k] - items_b[k] for k in sorted(items_a)]), True
    return (a["stderr"] ** 2 + b["stderr"] ** 2) ** 0.5, False


def stage_effects(path: str | Path, root: str | Path) -> list[dict[str, Any]]:
    """One row per (stage, task, metric) that a stage's eval and its nearest eval'd predecessor's
    eval both report, with a standard error on either side (see the module docstring); stages whose evals have not run are left out.
    Rows: stage, before (the predecessor), eval stages of both, task, metric, value_before,
    value_after, change, stderr (of the change; None when either side has none), paired (whether
    that standard error is the paired one)."""
    pipe, root = load_pipeline(path), Path(root)
    evals: dict[str, str] = {}  # evaluated stage -> its eval stage (the first one)
    parent: dict[str, str] = {}  # stage -> the stage its --from names
    for s in pipe.stages:
        args = shlex.split(s.run)
        if args[:1] == ["eval"] and (model := _ref_arg(args, 1)) is not None:
            evals.setdefault(model, s.name)
        if "--from" in args and (src := _ref_arg(args, args.index("--from") + 1)) is not None:
            parent[s.name] = src

    def results(stage: str) -> dict[tuple[str, str], dict[str, Any]] | None:
        d = root / evals[stage]
        if not (d / MANIFEST).is_file():
            return None
        return {(r["task"], r["metric"]): r for r in Dataset.open(d, stage="eval").iter_rows()}

    rows = []
    for model, ev in evals.items():
        prev, seen = parent.get(model), {model}
        while prev is not None and prev not in evals and prev not in seen:
            seen.add(prev)
            prev = parent.get(prev)
        if prev is None or prev not in evals:
            continue
        after, before = results(model), results(prev)
        if after is None or before is None:
            continue
        for key, a in after.items():
            b = before.get(key)
            if b is None or a["value"] is None or b["value"] is None:
                continue
            if a["stderr"] is None and b["stderr"] is None:
                continue  # a count (documents) or a transform of a metric shown (perplexity of the loss)
            se, paired = _change_stderr(root, evals[prev], ev, b, a)
            rows.append(
                {
                    "stage": model,
                    "before": prev,
                    "eval_before": evals[prev],
                    "eval_after": ev,
                    "task": key[0],
                    "metric": key[1],
                    "value_before": b["value"],
                    "value_after": a["value"],
                    "change": a["value"] - b["value"],
                    "stderr": se,
                    "paired": paired,
                }
            )
    return rows


def effects_table(rows: list[dict[str, Any]]) -> Table:
    """`stage_effects` rows as a table: the change, its standard error, the change in standard errors and
    whether that standard error is paired (both evals' per-item results over the same items)."""
    table = Table(title="stage effects (each stage's eval against the stage it started from)", title_justify="left")
    for col, just in (
        ("stage", "left"),
        ("from", "left"),
        ("task", "left"),
        ("metric", "left"),
        ("before", "right"),
        ("after", "right"),
        ("change", "right"),
        ("stderr", "right"),
        ("change/se", "right"),
        ("paired", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        se = r["stderr"]
        table.add_row(
            r["stage"],
            r["before"],
            r["task"],
            r["metric"],
            format_value(r["metric"], r["value_before"]),
            format_value(r["metric"], r["value_after"]),
            f"{r['change']:+.4f}",
            "" if se is None else f"{se:.4f}",
            "" if not se else f"{r['change'] / se:+.1f}",
            "yes" if r.get("paired") else "",
        )
    return table
