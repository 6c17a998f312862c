"""torchrun on 2 CPU processes (gloo): DDP and FSDP2 give the 1-process losses for the same global batch.

Each rank runs 2 micro-batches per step where the single process runs 4 (accumulation), so the
updates agree up to float summation order. The FSDP run stops after 2 steps and a single process
resumes it from the gathered (unsharded) checkpoint: the world size may change across a resume.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from pretrain_helpers import make_tokenizer, write_tokens

from llmctl import config as C
from llmctl.model.checkpoint import load_checkpoint
from llmctl.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

ARGS = [
    "--seq-len",
    "32",
    "--batch-tokens",
    "256",
    "--micro-batch",
    "2",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--ckpt-every",
    "2",
    "--d-model",
    "32",
    "--lr",
    "3e-3",
    "--warmup",
    "1",
]
FLAGS = {
    "seq_len": 32,
    "batch_tokens": 256,
    "train.micro_batch": 2,
    "train.steps": 4,
    "train.eval_every": 2,
    "train.ckpt_every": 2,
    "model.d_model": 32,
    "train.lr": 3e-3,
    "train.warmup_steps": 1,
}


def torchrun(tmp_path, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "llmctl",
        "pretrain",
        str(tmp_path / "tokens"),
        "-t",
        str(tmp_path / "tok"),
        "-o",
        str(tmp_path / out),
        *ARGS,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def metrics(run):
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    pretrain(root / "tokens", root / "tok", root / "single", C.load(PretrainConfig, None, None, FLAGS))
    return root


def assert_same_run(a, b, weight_atol: float = 1e-5):
    la, va = metrics(a)
    lb, vb = metrics(b)
    assert len(la) == len(lb) == 4 and len(va) == len(vb) == 2
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6) and va == pytest.approx(vb, rel=1e-5, abs=1e-6)
    assert la[-1] < la[0]  # it trained
    ma, _, _, _ = load_checkpoint(a)
    mb, _, _, _ = load_checkpoint(b)
    for (n, p), q in zip(ma.named_parameters(), mb.parameters()):
        assert torch.allclose(p, q, atol=weight_atol), n


def test_ddp_two_processes_equal_one(single):
    out = torchrun(single, "ddp")
    assert "2 rank(s) x 2 x 32 x 2 accumulation" in out and out.count("finished:") == 1  # printed by rank 0 only
    assert_same_run(single / "single", single / "ddp")


def test_fsdp_two_processes_equal_one_and_resume_on_one(single):
    torchrun(single, "fsdp", "--fsdp", "--stop-after", "2")
    assert metrics(single / "fsdp")[0] == pytest.approx(metrics(single / "single")[0][:2], rel=1e-5)
    pretrain(single / "tokens", single / "tok", single / "fsdp", C.load(PretrainConfig, None, None, FLAGS), resume=True)
    assert_same_run(single / "single", single / "fsdp")
