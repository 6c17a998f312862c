"""The dataset contract every stage reads and writes.

A dataset is a directory of Parquet shards plus `_manifest.json`, written last and atomically:
the manifest is the completion marker. While a stage runs, the directory holds `_run.json`
(the signature of the config and inputs being written) and one small JSON record per finished
task under `_tasks/`. Each shard is written to a hidden temporary name and renamed when
complete, and a task's record is written only after all of its files are in place, so a run
killed at any point and started again with the same command redoes only the unfinished tasks
and ends with exactly the output of an uninterrupted run.

Reading: `Dataset.open(path)` refuses a directory without a manifest, so a later stage never
reads half-written output, and a manifest it cannot trust: shard paths must stay inside the
dataset (no `..`, nothing absolute) and every shard must have the size the manifest records (a
`stat` each). A shard's SHA-256 is verified when it is read (`Dataset.verify`, `verify_shard`;
LLMCTL_VERIFY=0 skips it; its cost is in docs/reliability.md).
`Dataset.lineage()` gives the input record a later stage stores as its parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.config import output_fields, to_dict
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.fs import atomic_write_json
from llmctl.store.integrity import (  # noqa: F401 - file_sha256 and fingerprint_file are imported from here too
    file_sha256,
    fingerprint_file,
    first_line,
    open_parquet,
    read_manifest,
    read_parquet,
    read_state,
    verify_shard,
)
from llmctl.store.manifest import MANIFEST, now_iso, write_manifest

RUN_STATE = "_run.json"
TASKS_DIR = "_tasks"
ROW_GROUP_ROWS = 1024
MAX_BUFFER_BYTES = 64 << 20  # bounds a writer's memory however large the documents


# ----------------------------------------------------------------------------- small helpers


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see either the old content or the new, never a part."""
    fs.write_text_atomic(fs.to_path(path), text)


# ----------------------------------------------------------------------------- reading


@dataclass
class Dataset:
    """A finished stage output: shards listed by its manifest."""

    path: Path  # or a UPath (fsspec URI): see llmctl.store.fs
    manifest: dict[str, Any]

    @classmethod
    def is_dataset(cls, path: str | Path) -> bool:
        return (fs.to_path(path) / MANIFEST).is_file()

    @classmethod
    def open(
        cls,
        path: str | Path,
        stage: str | Sequence[str] | None = None,
        columns: Sequence[str] = (),
    ) -> Dataset:
        """Open a dataset directory; a one-line `UsageError` when it is not a usable one."""
        p = fs.to_path(path)
        if not p.exists():
            raise UsageError(f"{p}: no such dataset directory")
        if not p.is_dir():
            raise UsageError(f"{p}: expected a dataset directory (with {MANIFEST}), got a file")
        mpath = p / MANIFEST
        if not mpath.is_file():
            hint = " (its run has not finished: re-run the stage to complete it)" if (p / RUN_STATE).exists() else ""
            raise UsageError(f"{p}: not an llmctl dataset, no {MANIFEST}{hint}")
        manifest = read_manifest(mpath)
        ds = cls(p.absolute() if fs.is_local(p) else p, manifest)  # tasks may run in another directory
        ds.check_shards()
        if stage is not None:
            wanted = (stage,) if isinstance(stage, str) else tuple(stage)
            if ds.stage not in wanted:
                raise UsageError(f"{p}: is a '{ds.stage}' dataset, expected {' or '.join(repr(s) for s in wanted)}")
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise UsageError(f"{p}: has no column {missing[0]!r} (columns: {', '.join(ds.column_names)})")
        return ds

    def check_shards(self) -> None:
        """Every shard the manifest lists is present with the size it records (stat only, no read):
        a truncated or missing shard is a one-line error before a stage writes anything (on a URI:
        one listing, not a request per shard)."""
        listed = None if fs.is_local(self.path) else fs.sizes_below(self.path)
        root = self.path.resolve() if listed is None else None
        for rec in self.manifest["shards"]:
            shard = self.path / rec["path"]
            if root is not None and not shard.resolve().is_relative_to(root):
                raise UsageError(
                    f"{shard}: a symlink leading outside the dataset ({shard.resolve()}); "
                    "a dataset's shards live inside its directory"
                )
            try:
                n = fs.size(shard) if listed is None else listed[fs.key_of(shard.fs, shard)]
            except (KeyError, OSError):
                raise UsageError(f"{shard}: shard listed in {self.path / MANIFEST} is missing") from None
            if "bytes" in rec and n != int(rec["bytes"]):
                raise UsageError(
                    f"{shard}: {n} bytes where the manifest records {rec['bytes']} "
                    "(truncated or changed after it was written); re-run the stage that made it"
                )

    @property
    def shard_records(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "?")

    @property
    def fingerprint(self) -> str:
        return self.manifest.get("fingerprint") or sha256_text(canonical_json(self.manifest))

    @property
    def shards(self) -> list[Path]:
        return [self.path / s["path"] for s in self.manifest["shards"]]

    @property
    def num_rows(self) -> int:
        return sum(int(s["rows"]) for s in self.manifest["shards"])

    @property
    def schema(self) -> pa.Schema:
        if self.shards:
            return fs.read_schema(self.shards[0])
        return pa.schema([pa.field(f["name"], pa.type_for_alias(f["type"])) for f in self.manifest.get("schema", [])])

    @property
    def column_names(self) -> list[str]:
        return [f["name"] for f in self.manifest.get("schema", [])]

    def check_int_lists(self, column: str = "input_ids") -> None:
        """One-line `UsageError` unless `column` holds lists of integers (token ids) in the shards."""
        if not self.shards:
            return
        t = self.schema.field(column).type if column in self.schema.names else None
        if t is None or not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_integer(t.value_type):
            raise UsageError(f"{self.path}: {column} is {t}, expected a list of integers (token ids)")

    def recorded_input(self, stage: str) -> dict[str, Any] | None:
        """The input of stage `stage` (e.g. "tokenizer") this dataset's manifest records, if any."""
        return next((i for i in self.manifest.get("inputs") or [] if i.get("stage") == stage), None)

    def lineage(self) -> dict[str, Any]:
        """How a later stage records this dataset as its input."""
        return {"path": fs.display(self.path), "stage": self.stage, "fingerprint": self.fingerprint}

    def verify(self, index: int) -> Path:
        """The path of shard `index` once its bytes match the manifest's SHA-256 (see `verify_shard`)."""
        rec = self.manifest["shards"][index]
        shard = self.path / rec["path"]
        verify_shard(shard, rec.get("sha256"))
        return shard

    def read_shard(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        return read_parquet(self.verify(index), columns=list(columns) if columns else None)

    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = 1024, shards: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream record batches shard by shard, in manifest order (memory: one batch)."""
        for i in shards if shards is not None else range(len(self.shards)):
            pf = open_parquet(self.verify(i))
            try:
                yield from pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)
            except (pa.ArrowInvalid, OSError) as e:
                raise UsageError(f"{self.shards[i]}: unreadable Parquet ({first_line(e)})") from None

    def iter_rows(self, columns: Sequence[str] | None = None, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
        for batch in self.iter_batches(columns, batch_size):
            yield from batch.to_pylist()


# ----------------------------------------------------------------------------- writing


class ShardWriter:
    """Stream rows into one Parquet file under a temporary name; renamed on `close()`."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS):
        self.path = path
        self.schema = schema
        self.tmp = path.with_name(f".{path.name}.tmp")
        fs.mkdirs(self.tmp.parent)
        self.row_group_rows = row_group_rows
        self._writer = fs.parquet_writer(self.tmp, schema, compression="zstd")
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        """Buffer a row; a row group is written every `row_group_rows` rows or ~64 MB of strings."""
        self._buffer.append(row)
        self._buffered_bytes += sum(len(v) for v in row.values() if isinstance(v, (str, bytes, list)))
        if len(self._buffer) >= self.row_group_rows or self._buffered_bytes >= MAX_BUFFER_BYTES:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        self._flush()
        with self._disk_errors():
            self._writer.write_table(table.cast(self.schema), row_group_size=self.row_group_rows)
        self.rows += table.num_rows

    def _flush(self) -> None:
        if self._buffer:
            with self._disk_errors():
                self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self.rows += len(self._buffer)
            self._buffer = []
            self._buffered_bytes = 0

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """A write the filesystem refuses (a full disk, a quota) is one line naming the shard; the
        temporary file is removed."""
        try:
            yield
        except OSError as e:
            with contextlib.suppress(Exception):
                self.abort()
            why = e.strerror or first_line(e)
            raise UsageError(f"{self.path}: cannot write ({why}); free some space and re-run to resume") from None

    def close(self) -> dict[str, Any]:
        """Finish the file, rename it into place, and return its record for the manifest."""
        self._flush()
        with self._disk_errors():
            self._writer.close()
            digest = file_sha256(self.tmp)
            fs.replace(self.tmp, self.path)
        return {"rows": self.rows, "bytes": fs.size(self.path), "sha256": digest}

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            fs.unlink(self.tmp)


_OWN_NAMES = (TASKS_DIR, RUN_STATE, MANIFEST, "_work")  # entries of an output llmctl writes into, never through a link


def _is_tmp(name: str) -> bool:
    """llmctl's temporary file names: `.NAME.tmp-PID` (atomic writes) and `.NAME.tmp` (shards)."""
    return name.startswith(".") and ".tmp" in name


def is_llmctl_scaffold(d: Any) -> bool:
    """Whether directory `d` holds only what llmctl creates before an output's `_run.json` exists:
    temporary files, and a `_tasks/` of task records and temporary files (a run killed while it
    set the output up). Such a directory is llmctl's own, unfinished, and is started afresh."""
    for e in d.iterdir():
        if fs.is_local(e) and e.is_symlink():
            return False
        if e.name == TASKS_DIR and e.is_dir():
            if not all(f.is_file() and (f.suffix == ".json" or _is_tmp(f.name)) for f in e.iterdir()):
                return False
        elif not (e.is_file() and _is_tmp(e.name)):
            return False
    return True


def holds_llmctl_output(d: Any, stage: str | None = None) -> bool:
    """Whether directory `d` holds (part of) an llmctl output: a `_manifest.json` or `_run.json`
    (of `stage`, when given), or llmctl's scaffold of a killed start (`is_llmctl_scaffold`)."""
    for marker in (MANIFEST, RUN_STATE):
        f = d / marker
        if f.is_file():
            if stage is None:
                return True
            try:
                return json.loads(f.read_text(encoding="utf-8")).get("stage") == stage
            except (ValueError, OSError):
                return False
    return is_llmctl_scaffold(d)


def check_target(p: Any, stage: str | None = None, what: str = "") -> None:
    """Refuse, before anything is written, an output path that llmctl must not write into: a file,
    a non-empty directory that holds no llmctl output (of `stage`, when given), or one whose
    `_tasks`, `_run.json`, `_manifest.json` or `_work` is a symbolic link (llmctl writes only inside
    its output). `what` is appended to the message (what the path is for)."""
    if not p.exists():
        return
    if not p.is_dir():
        raise UsageError(f"{p}: output path exists and is not a directory{what}")
    if fs.is_local(p):
        for name in _OWN_NAMES:
            if (p / name).is_symlink():
                raise UsageError(f"{p / name}: is a symlink; llmctl writes its files only inside the output: remove it")
    if any(p.iterdir()) and not holds_llmctl_output(p, stage):
        raise UsageError(
            f"{p}: directory is not empty and holds no llmctl output{what}; move it away or choose another path"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


@dataclass
class StageOutput:
    """One stage's output directory while it is being written.

    Usage::

        out = StageOutput(path, "filter", cfg, inputs, overwrite=False)
        if out.complete: return out.manifest          # same config and inputs: nothing to do
        for task in tasks:
            if out.task_done(task.name): continue     # resumed: this task's files are in place
            w = out.shard_writer("part-00000.parquet", schema) ...
            out.finish_task(task.name, files={"data": [rec]}, stats={...})
        manifest = out.finalize(schema, stats=..., timings=...)
    """

    path: Path
    stage: str
    config: Any
    inputs: list[dict[str, Any]]
    overwrite: bool = False
    signature: str = ""
    manifest: dict[str, Any] | None = None
    resumed_tasks: int = 0
    _started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.path = fs.to_path(self.path)
        if fs.is_local(self.path):
            self.path = self.path.absolute()  # tasks (Ray workers) may run in another directory
        self._state = {
            "stage": self.stage,
            "config": output_fields(self.config),
            "inputs": [{k: i[k] for k in ("path", "fingerprint") if k in i} for i in self.inputs],
        }
        self.signature = sha256_text(canonical_json(self._state))
        self._prepare()

    # -- set-up: fresh, resume, complete, or refuse
    def _prepare(self) -> None:
        p = self.path
        check_target(p)
        mpath, rpath = p / MANIFEST, p / RUN_STATE
        previous: dict[str, Any] | None = None
        if mpath.is_file() or rpath.is_file():
            previous = read_state(mpath if mpath.is_file() else rpath, self.overwrite)
        elif p.is_dir() and any(p.iterdir()):  # check_target let it through: llmctl's scaffold of a killed start
            fs.rmtree(p)
        if previous is not None and previous.get("signature") != self.signature:
            if not self.overwrite:
                old = {
                    "stage": previous.get("stage"),
                    "config": previous.get("config_output", {}),
                    "inputs": [{k: i.get(k) for k in ("path", "fingerprint")} for i in previous.get("inputs", [])],
                }
                changed = _diff_keys(old, self._state)[:4]
                raise UsageError(
                    f"{p}: holds output of a different run (changed: {', '.join(changed) or 'signature'}); "
                    "pass --overwrite to replace it, or choose another output path"
                )
            fs.rmtree(p)
            previous = None
        if previous is not None and mpath.is_file():
            self.manifest = previous
            self._drop_run_state()  # a run killed between its manifest and this clean-up
            return
        if not rpath.is_file():  # _run.json first: a directory with _tasks/ always has it
            fs.mkdirs(p)
            atomic_write_json(
                rpath,
                {
                    "signature": self.signature,
                    "config_output": self._state["config"],
                    **{k: self._state[k] for k in ("stage", "inputs")},
                    "started": now_iso(),
                },
            )
        fs.mkdirs(p / TASKS_DIR)
        self.resumed_tasks = len(list((p / TASKS_DIR).glob("*.json")))
        for tmp in p.rglob(".*.tmp*"):  # leftovers of a killed run
            fs.unlink(tmp)

    def _drop_run_state(self) -> None:
        """Remove the in-progress state (`_run.json`, `_tasks/`, temporary files) of a finished output."""
        fs.unlink(self.path / RUN_STATE)
        fs.rmtree(self.path / TASKS_DIR)
        for tmp in self.path.glob(".*.tmp*"):
            fs.unlink(tmp)

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    # -- tasks
    def _task_path(self, name: str) -> Path:
        return self.path / TASKS_DIR / f"{name}.json"

    def task_done(self, name: str) -> bool:
        return self._task_path(name).is_file()

    def task_record(self, name: str) -> dict[str, Any]:
        return json.loads(self._task_path(name).read_text(encoding="utf-8"))

    def shard_writer(self, relpath: str, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS) -> ShardWriter:
        return ShardWriter(self.path / relpath, schema, row_group_rows)

    def finish_task(
        self,
        name: str,
        files: dict[str, list[dict[str, Any]]],
        stats: dict[str, Any] | None = None,
        seconds: float | None = None,
    ) -> None:
        """Mark a task complete; `files` maps a role ("data", "rejected", ...) to file records."""
        atomic_write_json(
            self._task_path(name), {"task": name, "files": files, "stats": stats or {}, "seconds": seconds}
        )

    # -- the completion marker
    def finalize(
        self,
        task_names: Sequence[str],
        schema: pa.Schema,
        stats: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write `_manifest.json` from the task records, then remove the in-progress state."""
        files: dict[str, list[dict[str, Any]]] = {}
        for name in task_names:
            for role, recs in self.task_record(name)["files"].items():
                files.setdefault(role, []).extend(recs)
        shards = files.pop("data", [])
        body = {
            "stage": self.stage,
            "config": to_dict(self.config),
            "config_output": self._state["config"],
            "inputs": self.inputs,
            "signature": self.signature,
            "shards": shards,
            "files": files,
            "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
            "num_rows": sum(int(s["rows"]) for s in shards),
            "stats": stats or {},
        }
        body["fingerprint"] = sha256_text(canonical_json({k: body[k] for k in ("signature", "shards", "files")}))
        body.update(extra or {})
        body["timings"] = {
            "seconds": round(time.time() - self._started, 3),
            "resumed_tasks": self.resumed_tasks,
            **(timings or {}),
        }
        body = write_manifest(self.path, body)
        self._drop_run_state()  # after the manifest: a kill before it keeps the resume state
        self.manifest = body
        return body


def shard_name(index: int, prefix: str = "part") -> str:
    """The name, without `.parquet`, of a stage's shard or task `index`: `part-00000`, `sig-00003`."""
    return f"{prefix}-{index:05d}"


def close_shards(relpath: str, **writers: ShardWriter | None) -> dict[str, list[dict[str, Any]]]:
    """Close a task's writers, one per role (`data=`, `rejected=`; None: the role is left out), each
    of whose file is `relpath` under its dataset, into the task's `files` record
    `{role: [{"path": relpath, rows, bytes, sha256}]}`. On a failure every writer is aborted."""
    files: dict[str, list[dict[str, Any]]] = {}
    try:
        for role, w in writers.items():
            if w is not None:
                files[role] = [{"path": relpath, **w.close()}]
    except BaseException:
        abort_shards(*writers.values())
        raise
    return files


def abort_shards(*writers: ShardWriter | None) -> None:
    """Abort every writer given (their temporary files removed); None entries are skipped."""
    for w in writers:
        if w is not None:
            w.abort()


def write_shard(out: StageOutput, relpath: str, table: pa.Table, schema: pa.Schema | None = None) -> dict[str, Any]:
    """Write `table` as the file `relpath` of `out` in one go (atomically, as ShardWriter does);
    returns its file record `{"path": relpath, rows, bytes, sha256}`."""
    w = out.shard_writer(relpath, schema or table.schema)
    try:
        w.write_table(table)
        return {"path": relpath, **w.close()}
    except BaseException:
        w.abort()
        raise
