"""`llmctl sweep` end to end on real text with tiny points: the table, resume of a finished sweep and of a
sweep killed mid-point (same losses as an uninterrupted one, with 2 worker processes), fit, check, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pretrain_helpers import make_tokenizer, write_tokens

from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset
from llmctl.sweep.run import SweepConfig, read_table, sweep

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

FLAGS = [
    "--budgets",
    "1.5e8,3e8",
    "--sizes",
    "1x16,1x24,1x32",
    "--seq-len",
    "32",
    "--batch-tokens",
    "256",
    "--set",
    "min_steps=25",
    "--set",
    "val_tokens=1024",
    "--set",
    "checkpoints=2",
    "--threads",
    "1",
]


def config() -> SweepConfig:
    return SweepConfig(
        budgets=[1.5e8, 3e8],
        sizes=["1x16", "1x24", "1x32"],
        seq_len=32,
        batch_tokens=256,
        min_steps=25,
        val_tokens=1024,
        checkpoints=2,
        threads=1,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweepdata")
    tok = make_tokenizer(tmp / "tok", vocab_size=400)
    return tmp / "tok", write_tokens(tmp / "tokens", tok, docs=300, val_every=10)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted sweep, one point after another in this process."""
    tok, tokens = data
    root = tmp_path_factory.mktemp("sweep") / "sw"
    lines: list[str] = []
    sweep(tokens, tok, root, config(), echo=lines.append)
    return root, lines


def test_sweep_trains_every_point_and_writes_the_table(reference):
    root, lines = reference
    rows = read_table(root)
    assert len(rows) == 6 and {r["budget"] for r in rows} == {1.5e8, 3e8}
    assert Dataset.open(root / "table", stage="sweep").num_rows == 6
    for r in rows:
        man = json.loads((root / "points" / r["point"] / "_manifest.json").read_text())
        assert man["stage"] == "pretrain" and man["model"]["d_model"] == r["d_model"]
        assert man["stats"]["steps_done"] == r["steps"] and man["stats"]["val_loss"] == r["val_loss"]
        assert abs(r["flops"] / r["budget"] - 1) < 0.02
    # twice the compute lowers each shape's held-out loss: the points learn
    by = {(r["d_model"], r["budget"]): r["val_loss"] for r in rows}
    for d in (16, 24, 32):
        assert by[(d, 3e8)] < by[(d, 1.5e8)]
    assert sum("val loss" in ln for ln in lines) == 6


def test_finished_sweep_skips_its_points(reference, data, monkeypatch):
    root, _ = reference
    import llmctl.sweep.run as sr

    def no_pretrain(*a, **k):
        raise AssertionError("a finished point started pretrain")

    # finished points are read from their manifests: no pretrain (nor, with --workers, a process) per point
    monkeypatch.setattr(sr, "_pretrain_here", no_pretrain)
    monkeypatch.setattr(sr, "_pretrain_subprocess", no_pretrain)
    lines: list[str] = []
    sweep(*reversed(data), root, config(), echo=lines.append)
    assert sum("already complete" in ln for ln in lines) == 6


def test_rerun_that_trains_differently_is_refused_before_it_writes(reference, data):
    root, _ = reference
    plan = (root / "_sweep.json").read_text()
    changed = config()
    changed.lr = 3e-2
    with pytest.raises(UsageError, match=r"train differently \(lr 0.01 -> 0.03\)"):
        sweep(*reversed(data), root, changed, echo=lambda m: None)
    assert (root / "_sweep.json").read_text() == plan
    threads = config()
    threads.threads = 2  # how points run is not how they train: the same sweep
    lines: list[str] = []
    sweep(*reversed(data), root, threads, echo=lines.append)
    assert sum("already complete" in ln for ln in lines) == 6


def test_sweep_killed_mid_point_resumes_that_point(reference, data, tmp_path):
    tok, tokens = data
    root = tmp_path / "sw"
    cmd = [
        sys.executable,
        "-m",
        "llmctl",
        "sweep",
        str(tokens),
        "-t",
        str(tok),
        "-o",
        str(root),
        *FLAGS,
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 240
        while killed is None and time.time() < deadline and proc.poll() is None:
            for run in sorted((root / "points").glob("*")) if (root / "points").is_dir() else []:
                if any((run / "checkpoints").glob("step_*/_manifest.json")) and not (run / "_manifest.json").exists():
                    killed = run.name
                    break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its workers and their pretrain processes
        proc.wait()
        gone = time.time() + 30
        while time.time() < gone and _alive_group(proc.pid):  # orphans are reaped by init a moment later
            time.sleep(0.05)
    assert killed, "the sweep finished (or never checkpointed) before it could be killed mid-point"
    lines: list[str] = []
    sweep(tokens, tok, root, config(), echo=lines.append)
    assert "resumed from" in (root / "logs" / f"{killed}.log").read_text()
    assert any(killed in ln and "already complete" not in ln for ln in lines)
    ref = {r["point"]: r["val_loss"] for r in read_table(reference[0])}
    got = {r["point"]: r["val_loss"] for r in read_table(root)}
    assert got.keys() == ref.keys()
    for name in ref:  # the same run as uninterrupted (up to thread-count rounding: 2 processes x 1 thread)
        assert got[name] == pytest.approx(ref[name], abs=1e-4), name


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_fit_check_and_report(reference):
    from llmctl.report.build import build_report
    from llmctl.sweep.check import check_sweep
    from llmctl.sweep.fit import fit_sweep, summary_lines

    root, _ = reference
    fit = fit_sweep(root, bootstrap=8)
    assert fit["prediction"]["budget"] == pytest.approx(9e8)
    for name in fit["plots"].values():
        assert (root / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert any("--set model.tie_embeddings=false" in ln for ln in summary_lines(fit))  # untied, the sweep's default
    c = check_sweep(root)
    man = json.loads((Path(c["run"]) / "_manifest.json").read_text())
    assert c["actual"] == man["stats"]["val_loss"]
    point = json.loads((root / "points" / read_table(root)[0]["point"] / "_manifest.json").read_text())
    assert man["model"]["tie_embeddings"] is point["model"]["tie_embeddings"] is False  # trained as the points were
    assert c["relative_error"] == pytest.approx((c["predicted"] - c["actual"]) / c["actual"])
    page = build_report(root.parent, root.parent / "report").read_text()
    assert "Scaling-law sweep" in page and "isoflop" in page and f"{c['actual']:.4f}" in page
