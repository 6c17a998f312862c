"""Dedup as a shuffle (issue 9): the output does not depend on the partition count nor on the
worker count, clusters are joined across partitions (a chain A~B~C is one cluster rooted at A), a
run resumes from the finished tasks of a half-done step, and a grouping task reads its partition
only (row groups pruned), never every key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_dedup import BOILERPLATE, cfg, edit_words, real_pages, rejected

from llmctl.data.dedup import base as D
from llmctl.data.dedup import run as dedup_run
from llmctl.data.dedup import shuffle as dedup_shuffle
from llmctl.data.filter import run_filter
from llmctl.errors import UsageError
from llmctl.store import fs

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out


def _shingles(text: str) -> set[bytes]:
    return D.shingles(D.normalize_text(text), 5)


def _band_matches(x: str, y: str) -> int:
    kx, ky = (D.band_keys(D.minhash(_shingles(t), 128, 1), 14, 9) for t in (x, y))
    return int((kx == ky).sum())


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """Three shards: a chain A~B~C (A and C below the threshold and in no common band), an exact copy
    of C, a near pair found in a few bands only, an exact pair, and distinct pages sharing boilerplate."""
    d = tmp_path_factory.mktemp("chain")
    p = [r["text"] for r in real_pages(6)]
    a = p[1]
    b = edit_words(a, 8, 1)
    c = edit_words(b, 8, 2)
    near = edit_words(p[3], 8, 1)
    # the premises of the test, on these real pages
    assert D.jaccard(_shingles(a), _shingles(b)) >= 0.8 and D.jaccard(_shingles(b), _shingles(c)) >= 0.8
    assert D.jaccard(_shingles(a), _shingles(c)) < 0.8 and _band_matches(a, c) == 0
    assert 0 < _band_matches(a, b) < 14 and 0 < _band_matches(b, c) < 14 and 0 < _band_matches(p[3], near) < 14
    shards = [
        [{"id": "A", "text": a}, {"id": "D1", "text": p[2]}, {"id": "N1", "text": p[3]}],
        [{"id": "B", "text": b}, {"id": "N2", "text": near}, {"id": "K1", "text": p[4] + "\n" + BOILERPLATE}],
        [
            {"id": "C", "text": c},
            {"id": "Cx", "text": c.upper()},
            {"id": "K2", "text": p[5] + "\n" + BOILERPLATE},
            {"id": "D2", "text": p[2].replace(" ", "  ")},
        ],
    ]
    paths = []
    for i, rows in enumerate(shards):
        f = d / f"shard-{i}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(f))
    return {"paths": paths}


def run(paths: list[str], out: Path | str, parts: int | None, workers: int = 1, executor: str = "local", **kw) -> dict:
    c = cfg(workers=workers)
    c.executor, c.ray_address = executor, None
    c.dedup.partitions = parts
    c.toxicity.enabled = kw.pop("toxicity", False)
    for k, v in kw.items():
        setattr(c.dedup, k, v)
    return run_filter(paths, out, c, progress=False)


def output_bytes(out: Path) -> dict[str, bytes]:
    files = sorted(out.glob("part-*.parquet")) + sorted(out.parent.glob(f"{out.name}.rejected/*.parquet"))
    return {str(f.relative_to(out.parent)).replace(out.name, "OUT", 1): f.read_bytes() for f in files}


def test_clusters_across_partitions(chain, tmp_path):
    run(chain["paths"], tmp_path / "out", parts=7)
    rej = rejected(tmp_path / "out")
    assert rej == {
        "B": ("dedup.minhash", "A"),
        "C": ("dedup.minhash", "A"),  # linked to A through B only
        "Cx": ("dedup.exact", "A"),  # an exact copy of a near duplicate points at the cluster's root
        "N2": ("dedup.minhash", "N1"),  # found in a few bands only
        "D2": ("dedup.exact", "D1"),
    }
    kept = {i for f in (tmp_path / "out").glob("part-*.parquet") for i in pq.read_table(f).column("id").to_pylist()}
    assert kept == {"A", "D1", "N1", "K1", "K2"}
    texts = {
        r["id"]: r["text"] for f in (tmp_path / "out").glob("part-*.parquet") for r in pq.read_table(f).to_pylist()
    }
    assert BOILERPLATE in texts["K1"] and BOILERPLATE not in texts["K2"]  # the span's later copy is cut


def test_output_identical_for_partitions_and_workers(chain, tmp_path):
    ref = run(chain["paths"], tmp_path / "p1w1", parts=1, workers=1)
    ref_bytes = output_bytes(tmp_path / "p1w1")
    assert len(ref_bytes) == 6
    for parts, workers in [(7, 2), (3, 1), (None, 2)]:
        out = tmp_path / f"p{parts}w{workers}"
        m = run(chain["paths"], out, parts=parts, workers=workers)
        assert output_bytes(out) == ref_bytes, (parts, workers)
        assert m["fingerprint"] == ref["fingerprint"]
        assert m["stats"]["dedup"]["clusters"] == ref["stats"]["dedup"]["clusters"]  # the same pairs checked
    assert ref["stats"]["dedup"]["clusters"]["minhash.candidate_pairs"] >= 3


def test_resume_from_half_done_step(chain, tmp_path, monkeypatch):
    clean = run(chain["paths"], tmp_path / "clean", parts=7)
    out = tmp_path / "crashed"
    calls: list[int] = []
    group_task = dedup_run.group_task

    def crash_at_4(t, report):
        calls.append(t.part)
        if t.part == 4:
            raise RuntimeError("killed during grouping")
        return group_task(t, report)

    monkeypatch.setattr(dedup_run, "group_task", crash_at_4)
    with pytest.raises(RuntimeError, match="killed"):
        run(chain["paths"], out, parts=7)
    assert calls == [0, 1, 2, 3, 4]
    tasks = out / "_work" / "groups" / "_tasks"
    assert sorted(p.name for p in tasks.glob("*.json")) == [f"pairs-0000{i}.json" for i in range(4)]
    (tasks / "pairs-00001.json").unlink()  # a task whose record was lost is redone
    calls.clear()

    def count(t, report):
        calls.append(t.part)
        return group_task(t, report)

    monkeypatch.setattr(dedup_run, "group_task", count)
    m = run(chain["paths"], out, parts=7)
    assert calls == [1, 4, 5, 6]
    assert m["fingerprint"] == clean["fingerprint"]
    assert output_bytes(out) == output_bytes(tmp_path / "clean")


def test_grouping_reads_its_partition_only(chain, tmp_path, monkeypatch):
    reads: list[tuple[str, int, np.ndarray]] = []
    read_part = dedup_shuffle.read_part

    def spy(path, col, value, columns):
        t = read_part(path, col, value, columns)
        reads.append((Path(path).name, value, t))
        return t

    monkeypatch.setattr(dedup_shuffle, "read_part", spy)
    run(chain["paths"], tmp_path / "out", parts=5, keep_work=True)
    sig = tmp_path / "out" / "_work" / "signatures"
    for g in range(3):
        keys = sig / f"keys-{g:05d}.parquet"
        md = pq.ParquetFile(keys).metadata
        parts = pq.read_table(keys, columns=["part"]).column("part").to_numpy()
        assert md.num_row_groups == len(np.unique(parts)) > 1  # one row group per non-empty partition
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(0).statistics
            assert st.min == st.max
        key_reads = [(v, t) for name, v, t in reads if name == keys.name]
        assert sorted(v for v, _ in key_reads) == list(range(5))  # each grouping task reads this file once
        for v, t in key_reads:
            assert 0 < t.num_rows < len(parts) and t.num_rows == int((parts == v).sum())
    # the reader skips the other row groups rather than filtering their rows: with every other
    # row group's data pages destroyed, partition p still reads
    keys = sig / "keys-00000.parquet"
    md = pq.ParquetFile(keys).metadata
    first = md.row_group(0).column(0).statistics.min
    raw = bytearray(keys.read_bytes())
    for i in range(1, md.num_row_groups):
        for c in range(md.num_columns):
            off = md.row_group(i).column(c).data_page_offset  # a page header that cannot be parsed
            raw[off : off + 16] = b"\xff" * 16
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(bytes(raw))
    got = fs.read_table(broken, columns=["part", "key"], filters=[("part", "=", first)])
    assert got.num_rows == int((pq.read_table(keys, columns=["part"]).column("part").to_numpy() == first).sum())
    with pytest.raises(OSError):
        pq.read_table(broken)


def test_shuffle_on_uris(chain, tmp_path):
    """Every intermediate file of the shuffle on an fsspec URI: memory:// (one process) and
    file:// (through fsspec, in worker processes) give the local output's bytes."""
    import uuid

    import fsspec

    run(chain["paths"], tmp_path / "local", parts=1)
    local = output_bytes(tmp_path / "local")
    run(chain["paths"], f"file://{tmp_path}/remote", parts=4, workers=2)
    assert output_bytes(tmp_path / "remote") == local
    root = f"memory://dedup-{uuid.uuid4().hex[:8]}"
    mem = fsspec.filesystem("memory")
    try:
        run(chain["paths"], f"{root}/out", parts=3)
        assert {k: mem.cat(f"{root}/{k.replace('OUT', 'out', 1)}") for k in local} == local
        assert not mem.exists(f"{root}/out/_work")
    finally:
        mem.rm(root.removeprefix("memory://"), recursive=True)


def test_shuffle_on_ray_equals_local(chain, tmp_path):
    """Every step of the shuffle as Ray tasks (a local Ray instance, 2 workers, 5 partitions), with
    the langid and toxicity steps and line dedup on too (the boilerplate line of K1 and K2 is in 2
    documents: more than line_max_docs=1)."""
    ray = pytest.importorskip("ray")
    extra = {"toxicity": True, "line": True, "line_max_docs": 1}
    local = run(chain["paths"], tmp_path / "local", parts=1, **extra)
    assert (
        local["stats"]["counters"]["dedup.line.docs_edited"] >= 1
        and local["stats"]["counters"]["toxicity.scored"] == 10
    )
    try:
        run(chain["paths"], tmp_path / "ray", parts=5, workers=2, executor="ray", **extra)
    finally:
        ray.shutdown()
    assert output_bytes(tmp_path / "ray") == output_bytes(tmp_path / "local")


def test_bad_partition_count(chain, tmp_path):
    with pytest.raises(UsageError, match="dedup.partitions"):
        run(chain["paths"], tmp_path / "bad", parts=0)
    assert not (tmp_path / "bad").exists()


def test_cli_dedup_partitions_flag(chain, tmp_path):
    from typer.testing import CliRunner

    from llmctl.cli import app

    r = CliRunner().invoke(
        app,
        [
            "filter",
            *chain["paths"],
            "-o",
            str(tmp_path / "out"),
            "--no-c4",
            "--no-gopher",
            "--dedup-partitions",
            "3",
            "--keep-work",
            "--workers",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out" / "_work" / "groups").glob("pairs-*.parquet")) == [
        "pairs-00000.parquet",
        "pairs-00001.parquet",
        "pairs-00002.parquet",
    ]
    r = CliRunner().invoke(app, ["filter", *chain["paths"], "-o", str(tmp_path / "bad"), "--dedup-partitions", "0"])
    assert isinstance(r.exception, UsageError) and "dedup.partitions" in str(r.exception)  # main() prints it, exit 2


def test_progress_bars_reach_their_totals(chain, tmp_path, monkeypatch):
    """Each dedup bar is measured in what its tasks report: documents for signatures and the final
    write, finished tasks for the shuffle's steps (keys are not counted as documents)."""
    from llmctl.utils import progress as P

    bars: list[P.StageProgress] = []

    class Recorded(P.StageProgress):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            bars.append(self)

    monkeypatch.setattr(dedup_run, "StageProgress", Recorded)
    run(chain["paths"], tmp_path / "out", parts=3)
    got = {b._progress.tasks[0].description: (b.unit, b._progress.tasks[0].total, b.counts[b.unit]) for b in bars}
    docs = sum(1 for p in chain["paths"] for _ in open(p))
    assert got["dedup signatures"] == ("docs", docs, docs)
    assert got["dedup groups"] == got["dedup verify"] == got["dedup spans"] == ("tasks", 3, 3)
    assert got["dedup clusters"] == ("tasks", 1, 1)
    assert got["dedup write"][0] == "docs" and got["dedup write"][1] == got["dedup write"][2] > 0
    assert all(b.counts["docs"] <= docs for b in bars)
