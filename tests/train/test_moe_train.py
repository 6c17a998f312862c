"""An MoE model through the training stages: torchrun DDP / FSDP2 equal one process, exact resume,
and the MoE metrics every step (the dense path is tests/test_distributed.py)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from moe_helpers import one_thread  # noqa: F401  (autouse fixture)
from pretrain_helpers import make_tokenizer, write_tokens

from llmctl import config as C
from llmctl.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

ARGS = [
    "--preset",
    "moe-tiny",
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
    "--set",
    "model.n_shared_experts=1",
    "--set",
    "model.moe_d_ff=32",
]
FLAGS = {
    "model.preset": "moe-tiny",
    "seq_len": 32,
    "batch_tokens": 256,
    "train.micro_batch": 2,
    "train.steps": 4,
    "train.eval_every": 2,
    "train.ckpt_every": 2,
    "model.d_model": 32,
    "train.lr": 3e-3,
    "train.warmup_steps": 1,
    "model.n_shared_experts": 1,
    "model.moe_d_ff": 32,
}
KEYS = ("loss", "moe_lb_loss", "moe_z_loss", "moe_aux_loss", "moe_imbalance", "moe_load/L1/e7")


def torchrun(root, out, *extra):
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
        str(root / "tokens"),
        "-t",
        str(root / "tok"),
        "-o",
        str(root / out),
        *ARGS,
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def records(run):
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    pretrain(root / "tokens", root / "tok", root / "single", C.load(PretrainConfig, None, None, FLAGS))
    return root


def assert_same(a, b):
    (ra, va), (rb, vb) = records(a), records(b)
    assert len(ra) == len(rb) == 4 and len(va) == len(vb) == 2
    for k in KEYS:
        assert [r[k] for r in ra] == pytest.approx([r[k] for r in rb], rel=1e-5, abs=1e-6), k
    assert va == pytest.approx(vb, rel=1e-5)


def test_moe_metrics_every_step(single, tmp_path):
    recs, val = records(single / "single")
    assert recs[-1]["loss"] < recs[0]["loss"] and val[-1] < val[0]  # it learns, on held-out tokens too
    for r in recs:
        loads = [r[f"moe_load/L{i}/e{e}"] for i in (0, 1) for e in range(8)]
        assert sum(loads) == pytest.approx(2.0) and r["moe_dropped"] == 0.0  # 2 layers; dropless
        assert r["moe_aux_loss"] == pytest.approx(0.01 * r["moe_lb_loss"] + 0.001 * r["moe_z_loss"], rel=1e-4)
        layer_imb = [max(r[f"moe_load/L{i}/e{e}"] for e in range(8)) * 8 for i in (0, 1)]
        assert r["moe_imbalance"] == pytest.approx(max(layer_imb))
    # the report charts each layer's expert load over training; a dense run gets no such chart
    from llmctl.report.build import build_report
    from llmctl.report.moe import expert_loads, moe_figure

    loads = expert_loads(recs)
    assert sorted(loads) == [0, 1] and len(loads[0]) == 8 and len(loads[0][0]) == 4
    assert [sum(e[s] for e in loads[1]) for s in range(4)] == pytest.approx([1.0] * 4)
    html = build_report(single, tmp_path / "report").read_text()  # root: tokens + the run
    assert "single: expert load" in html and (tmp_path / "report" / "single_experts.png").stat().st_size > 1000
    fig = moe_figure(single / "single")
    assert len(fig.axes) == 3  # two MoE layers + the imbalance panel


def test_moe_ddp_and_fsdp_two_processes_equal_one_and_resume_is_exact(single):
    out = torchrun(single, "ddp")
    assert "moe: 8 experts top-2" in out and "active parameters" in out
    assert_same(single / "single", single / "ddp")
    torchrun(single, "fsdp", "--fsdp", "--stop-after", "2")
    pretrain(
        single / "tokens", single / "tok", single / "fsdp", C.load(PretrainConfig, None, None, FLAGS)
    )  # resume on 1
    assert_same(single / "single", single / "fsdp")


def test_sft_reward_dpo_generate_and_eval_run_on_an_moe_checkpoint(tmp_path):
    from align_helpers import GSM8K, synthetic_prefs, tiny_checkpoint, tokenizer, write_jsonl
    from tokenize_helpers import tinystories_docs, write_documents

    from llmctl.eval.runner import EvalConfig, run_eval
    from llmctl.model.checkpoint import load_checkpoint
    from llmctl.model.generate import generate_text
    from llmctl.train.dpo import DPOConfig, run_dpo
    from llmctl.train.reward import RewardConfig, run_reward
    from llmctl.train.sft import SFTConfig, encode_sft, make_sft_evaluate, run_sft

    ck = tiny_checkpoint(tmp_path / "ck", n_experts=4, moe_top_k=2, moe_d_ff=32, n_shared_experts=1)
    rows = [{"prompt": r["question"], "response": r["answer"]} for r in map(json.loads, GSM8K.read_text().splitlines())]
    cfg = SFTConfig(max_len=512, val_fraction=0.2)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 8, 4, 4, 3e-3
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 2, 8, 100
    _, val, _ = encode_sft(tokenizer(), rows, 512, 0.2, cfg.train.seed)
    with torch.no_grad():
        before = make_sft_evaluate(val, 512, 4, tokenizer().pad_id)(load_checkpoint(ck)[0])["val_loss"]
    sft = run_sft(write_jsonl(tmp_path / "sft.jsonl", rows), ck, tmp_path / "sft", cfg)
    assert sft["val_loss"] < before - 0.3 and sft["moe_lb_loss"] > 0 and "moe_load/L1/e3" in sft

    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_prefs(32))
    rc = RewardConfig(max_len=64, val_fraction=0.25)
    rc.train.steps, rc.train.batch_size, rc.train.micro_batch, rc.train.warmup_steps, rc.train.eval_every = (
        3,
        8,
        8,
        1,
        3,
    )
    rm = run_reward(prefs, tmp_path / "sft", tmp_path / "rm", rc)
    assert rm["finished"] and "val_accuracy" in rm and rm["moe_z_loss"] > 0
    dc = DPOConfig(max_len=64, val_fraction=0.25)
    dc.train.steps, dc.train.batch_size, dc.train.micro_batch, dc.train.warmup_steps, dc.train.eval_every = (
        3,
        8,
        8,
        1,
        3,
    )
    run_dpo(prefs, tmp_path / "sft", tmp_path / "dpo", dc)
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and "moe_imbalance" in first  # policy == MoE reference

    assert generate_text(tmp_path / "dpo", "Question: What is 2+3?", max_tokens=8, temperature=0)  # some text
    ec = EvalConfig(tasks=["perplexity"], batch_size=2, progress=False)
    ec.perplexity.data = str(write_documents(tmp_path / "docs", [tinystories_docs(4)]))
    res = run_eval(tmp_path / "dpo", tmp_path / "res", ec)["stats"]["results"]
    assert math.isfinite({r["metric"]: r["value"] for r in res}["loss"])
