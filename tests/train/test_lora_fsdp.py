"""LoRA under FSDP2: two gloo processes with the adapters trainable and the base frozen inside
`fully_shard` compute the one-process run's losses, save the same adapters, and resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from align_helpers import GSM8K, tiny_checkpoint, write_jsonl
from safetensors.torch import load_file

from llmctl.errors import UsageError
from llmctl.model.checkpoint import WEIGHTS, load_checkpoint
from llmctl.model.lora import ADAPTER_WEIGHTS, LoraConfig
from llmctl.train.finetune import use_lora
from llmctl.train.loop import TrainConfig

ARGS = ["--steps", "4", "--batch-size", "4", "--micro-batch", "2", "--lr", "1e-2", "--warmup", "1"]
ARGS += ["--eval-every", "2", "--ckpt-every", "2", "--max-len", "256", "--lora-r", "4", "--val-fraction", "0.25"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(tmp_path, out, pre=(), extra=()):
    cmd = [sys.executable, *pre, "-m", "llmctl", "sft", str(tmp_path / "sft.jsonl"), "--from", str(tmp_path / "ck")]
    cmd += [*ARGS, "-o", str(tmp_path / out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def _metrics(run):
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


@pytest.mark.slow  # four torchrun launches
def test_lora_sft_under_fsdp_equals_one_process_and_resumes(tmp_path):
    tiny_checkpoint(tmp_path / "ck")
    rows = [
        {"prompt": r["question"], "response": r["answer"]} for r in map(json.loads, GSM8K.read_text().splitlines()[:24])
    ]
    write_jsonl(tmp_path / "sft.jsonl", rows)
    (tmp_path / "fsdp.yaml").write_text("train:\n  fsdp: true\n")
    fsdp = ["-c", str(tmp_path / "fsdp.yaml")]
    _run(tmp_path, "one")
    _run(tmp_path, "fsdp", TORCHRUN, fsdp)
    _run(tmp_path, "part", TORCHRUN, [*fsdp, "--stop-after", "2"])  # killed after step 2, then resumed
    _run(tmp_path, "part", TORCHRUN, fsdp)
    one = _metrics(tmp_path / "one")
    assert len(one[0]) == 4 and len(one[1]) == 2
    for run in ("fsdp", "part"):
        got = _metrics(tmp_path / run)
        assert man_layout(tmp_path / run) == {"world": 2, "dp": 2, "tp": 1, "fsdp": True}
        for a, b in zip(one, got):
            assert b == pytest.approx(a, abs=1e-5), (run, a, b)
        ck = tmp_path / run / "checkpoints" / "step_0000004"
        assert not (ck / WEIGHTS).exists()  # adapters only: the base stayed frozen
        want = load_file(str(tmp_path / "one" / "checkpoints" / "step_0000004" / ADAPTER_WEIGHTS))
        got_ad = load_file(str(ck / ADAPTER_WEIGHTS))
        assert set(got_ad) == set(want) and all(torch.allclose(got_ad[k], want[k], atol=1e-5) for k in want)
        state = torch.load(ck / "train_state.pt", weights_only=True)
        assert set(state["optimizer"]["state"]) == {k.removeprefix("base_model.model.model.") for k in want}
    ids = torch.randint(0, 400, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = (load_checkpoint(tmp_path / d)[0](ids) for d in ("one", "part"))
    assert torch.allclose(a, b, atol=1e-5)


def man_layout(run):
    return json.loads((run / "checkpoints" / "step_0000004" / "_manifest.json").read_text())["layout"]


def test_lora_with_tensor_parallelism_is_one_line():
    cfg = TrainConfig(tp=2, lora=LoraConfig(r=4))
    with pytest.raises(UsageError, match="not with --tp") as e:
        use_lora(torch.nn.Linear(2, 2), cfg, {}, "sft")
    assert "\n" not in str(e.value)
