"""Tensor parallelism and 2-D (FSDP2 x TP) under torchrun on CPU processes (gloo).

Must hold (issue 16), each against a 1-process run of the same config and global batch:
- TP=2 in 2 processes gives its losses over 5 steps, and `export` of the TP checkpoint gives the
  same Hugging Face logits;
- dp=2 x tp=2 in 4 processes too; a checkpoint written at 2 x 2 resumes at tp=1 x dp=4 and at
  1 process with the uninterrupted losses (checkpoints are full, unsharded tensors);
- shapes that do not divide by --tp are refused with one line before any rank builds the model.

Tolerance: relative 1e-5 on every train and validation loss (the runs differ only in the order
of float sums: sharded matmuls, reduce-scatters, accumulation over fewer micro-steps; measured
differences are ~1e-7 relative).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from pretrain_helpers import make_tokenizer, write_tokens

from llmctl import config as C
from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig
from llmctl.train import distributed as D
from llmctl.train import parallel as P
from llmctl.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

# GQA (4 query heads, 2 kv heads): with tp=2 each rank holds 2 query heads and 1 kv head
ARGS = [
    "--seq-len",
    "32",
    "--batch-tokens",
    "256",
    "--micro-batch",
    "2",
    "--steps",
    "5",
    "--eval-every",
    "5",
    "--ckpt-every",
    "2",
    "--d-model",
    "32",
    "--n-kv-head",
    "2",
    "--lr",
    "3e-3",
    "--warmup",
    "1",
    "--set",
    "train.keep_checkpoints=5",
]
FLAGS = {
    "seq_len": 32,
    "batch_tokens": 256,
    "train.micro_batch": 2,
    "train.steps": 5,
    "train.eval_every": 5,
    "train.ckpt_every": 2,
    "model.d_model": 32,
    "model.n_kv_head": 2,
    "train.lr": 3e-3,
    "train.warmup_steps": 1,
    "train.keep_checkpoints": 5,
}
REL = 1e-5


def torchrun(root, out, nproc, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "llmctl",
        "pretrain",
        str(root / "tokens"),
        "-t",
        str(root / "tok"),
        "-o",
        str(root / out),
        *ARGS,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def losses(run):
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r] + [r["val_loss"] for r in recs if "val_loss" in r]


def cut_after(run, step, dst):
    """A copy of `run` as a kill right after its step-`step` checkpoint leaves it (no manifest, no later checkpoints)."""
    shutil.copytree(run, dst)
    (dst / "_manifest.json").unlink()
    for ck in (dst / "checkpoints").glob("step_*"):
        if int(ck.name.split("_")[1]) > step:
            shutil.rmtree(ck)
    return dst


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    pretrain(root / "tokens", root / "tok", root / "single", C.load(PretrainConfig, None, None, FLAGS))
    ref = losses(root / "single")
    assert len(ref) == 6 and ref[4] < ref[0]  # 5 train losses + 1 val loss; it learned
    return root, ref


def hf_logits(ckpt, out, ids):
    from transformers import AutoModelForCausalLM

    from llmctl.export.hf import export_hf

    export_hf(ckpt, out)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


def test_tp2_equals_one_process_and_exports_the_same_model(single):
    root, ref = single
    r = torchrun(root, "tp2", 2, "--tp", "2")
    assert "1 rank(s) of tp 2 x 2 x 32 x 4 accumulation" in r.stdout and r.stdout.count("finished:") == 1
    assert losses(root / "tp2") == pytest.approx(ref, rel=REL)
    stats = json.loads((root / "tp2" / "_manifest.json").read_text())["stats"]
    assert (stats["layout_world"], stats["layout_dp"], stats["layout_tp"]) == (2, 1, 2)
    assert stats["tokens"] == 5 * 256  # tokens (and so tokens/s) count each token of the mesh's batch once
    assert (
        json.loads((root / "tp2" / "checkpoints" / "step_0000005" / "_manifest.json").read_text())["layout"]["tp"] == 2
    )
    ids = torch.arange(3, 60).unsqueeze(0)
    ours = hf_logits(root / "tp2", root / "hf_tp2", ids)
    theirs = hf_logits(root / "single", root / "hf_single", ids)
    assert (ours - theirs).abs().max().item() < 1e-4, (ours - theirs).abs().max().item()


@pytest.mark.slow  # 4 gloo processes, twice: ~1 min on 2 loaded cores
def test_2x2_equals_one_process_and_resumes_at_dp4_and_at_one_process(single):
    root, ref = single
    r = torchrun(root, "tp22", 4, "--tp", "2")
    assert "2 rank(s) of tp 2 x 2 x 32 x 2 accumulation" in r.stdout
    assert losses(root / "tp22") == pytest.approx(ref, rel=REL)
    stats = json.loads((root / "tp22" / "_manifest.json").read_text())["stats"]
    assert (stats["layout_dp"], stats["layout_tp"], stats["layout_fsdp"]) == (2, 2, True) and stats["tokens"] == 5 * 256
    # killed after the step-2 checkpoint written at 2 x 2; resumed at tp=1 x dp=4 (DDP) ...
    cut_after(root / "tp22", 2, root / "dp4")
    r = torchrun(root, "dp4", 4)
    assert "resumed from" in r.stdout and "step_0000002 at step 2" in r.stdout
    assert losses(root / "dp4") == pytest.approx(ref, rel=REL)
    # ... and in this one process
    cut_after(root / "tp22", 2, root / "one")
    s = pretrain(root / "tokens", root / "tok", root / "one", C.load(PretrainConfig, None, None, FLAGS))
    assert s["start_step"] == 2 and s["layout_world"] == 1
    assert losses(root / "one") == pytest.approx(ref, rel=REL)


@pytest.mark.parametrize(
    "shape,tp,named",
    [
        (dict(n_head=6, d_model=48), 4, "n_head=6, n_kv_head=6"),  # heads (and so kv heads)
        (dict(n_kv_head=1), 2, "n_kv_head=1"),  # kv heads only
        (dict(vocab_size=401), 2, "vocab_size=401"),  # vocabulary
        (dict(d_ff=102), 4, "d_ff=102"),  # MLP width
    ],
)
def test_indivisible_shapes_are_named(shape, tp, named):
    cfg = ModelConfig(**{"vocab_size": 400, "d_model": 32, "n_head": 4, **shape})
    with pytest.raises(UsageError, match=named) as e:
        P.check_divisible(cfg, tp)
    assert "\n" not in str(e.value) and f"not divisible by {tp}" in str(e.value)
    P.check_divisible(ModelConfig(vocab_size=400, d_model=32, n_head=4), tp)  # the tests' shape divides


def test_indivisible_refused_before_the_model_is_built(single, monkeypatch):
    """pretrain() at tp=2 (as rank 0 of 2 sees it) stops at the check: no Transformer is constructed."""
    root, _ = single
    built = []
    monkeypatch.setattr("llmctl.train.pretrain.Transformer", lambda *a, **k: built.append(1))
    monkeypatch.setattr(D, "init", lambda device="auto", tp=1: D.Dist(0, 2, 0, torch.device("cpu"), tp, None))
    cfg = C.load(PretrainConfig, None, None, {**FLAGS, "model.n_kv_head": 1, "train.tp": 2})
    with pytest.raises(UsageError, match="n_kv_head=1 not divisible by 2"):
        pretrain(root / "tokens", root / "tok", root / "refused", cfg)
    assert not built and not (root / "refused").exists()


def test_layout_errors():
    with pytest.raises(UsageError, match="torchrun --nproc_per_node 2"):
        P.check_layout(1, 2)
    with pytest.raises(UsageError, match="does not divide the 4 processes"):
        P.check_layout(4, 3)
    P.check_layout(4, 2)


def test_gpu_throughput_script_dry_run():
    """scripts/gpu_throughput.sh (the GPU figures' command) runs its plumbing on CPU with --dry-run."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(
        ["bash", os.path.join(repo, "scripts", "gpu_throughput.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PY": sys.executable},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 process:" in r.stdout and "tok/s" in r.stdout
