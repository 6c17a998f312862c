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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmctl.cli.app import app
from llmctl.errors import UsageError
from llmctl.store.dataset import MANIFEST, atomic_write_json, canonical_json, fingerprint_file
from llmctl.store.lock import exclusive_output

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
        if (root / stage.name).exists():
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
