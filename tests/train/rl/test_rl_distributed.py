"""`llmctl rl` under torchrun with 2 gloo processes: the rollouts are sharded across the ranks (each
rank samples its own half of the prompts a single process would sample) and the run trains to the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rl_helpers as H

from llmctl.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

ARGS = [
    "--algo",
    "grpo",
    "--reward",
    "rl_helpers:record_prompts",
    "-G",
    "2",
    "--rollout-prompts",
    "4",
    "--max-new-tokens",
    "4",
    "--batch-size",
    "8",
    "--micro-batch",
    "4",
    "--steps",
    "3",
    "--lr",
    "1e-3",
    "--val-fraction",
    "0",
    "--eval-every",
    "0",
    "--ckpt-every",
    "3",
    "--beta",
    "0.04",
]


def run(tmp_path: Path, name: str, nproc: int, monkeypatch) -> list[list[list[str]]]:
    """One process in this one (CliRunner), two under torchrun; each rank's reward calls logged."""
    ck, prompts = tmp_path / "ck", tmp_path / "prompts.jsonl"
    log = tmp_path / f"{name}.log"
    args = ["rl", str(prompts), "--from", str(ck), "-o", str(tmp_path / name), *ARGS]
    if nproc == 1:
        from typer.testing import CliRunner

        from llmctl.cli import app

        monkeypatch.setenv("RL_PROMPT_LOG", str(log))
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "llmctl",
            *args,
        ]
        tests = str(Path(__file__).parents[2])
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RL_PROMPT_LOG": str(log),
            "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return [[json.loads(ln) for ln in Path(f"{log}.{rank}").read_text().splitlines()] for rank in range(nproc)]


def test_ddp_rollouts_are_sharded_across_ranks(tmp_path, monkeypatch):
    H.setup(tmp_path)
    (single,) = run(tmp_path, "single", 1, monkeypatch)
    r0, r1 = run(tmp_path, "ddp", 2, monkeypatch)
    assert len(single) == len(r0) == len(r1) == 3  # one rollout per step (8 completions = 4 prompts x G 2)
    for one, a, b in zip(single, r0, r1):
        assert len(a) == len(b) == 4 and not set(a) & set(b)  # each rank its own 2 prompts x 2
        assert sorted(a + b) == sorted(one)  # together: the prompts one process samples
    recs = [json.loads(ln) for ln in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
    load_checkpoint(tmp_path / "ddp")
