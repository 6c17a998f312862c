"""llmctl dpo vs TRL's DPOTrainer: same exported model, same pairs, same hyperparameters, same batch order.

    .venv/bin/python benchmarks/dpo.py [--steps 6] [--pairs 256] [--layers 4] [--d-model 256] [--threads 2]

Builds a tokenizer (vocab 2048) on real HH-RLHF harmless-base pairs (../shared/data/prefs, converted
by `llmctl data import --format prefs`), a randomly initialised Llama-style model, exports it with
`llmctl export`, then trains both for --steps steps of 8 pairs: llmctl through `run_dpo`, TRL 1.16
in its own virtualenv (benchmarks/.venvs/trl, installed by this script; see ../shared/PEERS.md).
Pinned so the two compute the same thing: TRL gets llmctl's token ids (prompt_ids / chosen_ids /
rejected_ids, so no re-tokenization), the batches in llmctl's order (sequential sampler), constant
lr with no warmup, AdamW(0.9, 0.999, eps 1e-8, no weight decay), grad clip 1.0, and the same precision
(--dtype: fp32, or bf16 autocast; TRL's DPOConfig defaults to bf16=True even on CPU, so it is pinned).
Prints per-step loss and TRL's metrics side by side, the largest difference (target: first step
within 1e-4), and seconds per step after the first (throughput ratio; target llmctl >= TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# a script here named like a standard-library module would shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".venvs" / "trl"
HH = ROOT.parent / "shared" / "data" / "prefs" / "hh_rlhf_harmless_base_test.jsonl"
METRICS = [
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
]

TRL_SCRIPT = r"""
import json, sys, time
import torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

job = json.load(open(sys.argv[1]))
torch.set_num_threads(job["threads"])
torch.manual_seed(0)
rows = [json.loads(l) for l in open(job["pairs"])]
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(job["model"])

class Pinned(DPOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # llmctl's ids, already split into prompt / chosen / rejected
    def _get_train_sampler(self, *a, **k):
        return SequentialSampler(self.train_dataset)

class Clock(TrainerCallback):
    def __init__(self): self.t = []
    def on_step_end(self, args, state, control, **kw): self.t.append(time.perf_counter())

cfg = DPOConfig(output_dir=job["out"], use_cpu=True, report_to=[], save_strategy="no", max_steps=job["steps"],
                logging_steps=1, beta=job["beta"], learning_rate=job["lr"], lr_scheduler_type="constant",
                warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                max_grad_norm=1.0, per_device_train_batch_size=job["batch"], gradient_accumulation_steps=1,
                max_length=None, seed=0, dataloader_num_workers=0, remove_unused_columns=False,
                bf16=job["bf16"])  # TRL's default is bf16=True, autocast even on CPU: pinned to llmctl's --dtype
clock = Clock()
trainer = Pinned(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[clock])
t0 = time.perf_counter()
trainer.train()
logs = [h for h in trainer.state.log_history if "rewards/chosen" in h]
json.dump({"logs": logs, "step_times": [b - a for a, b in zip([t0] + clock.t, clock.t)]}, open(job["result"], "w"))
"""


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists() or subprocess.run([py, "-c", "import trl"], capture_output=True).returncode:
        print(f"installing trl into {VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        # reuse the project's torch + transformers (CPU wheels) instead of downloading a second torch
        site = next((ROOT / ".venv" / "lib").glob("python*/site-packages"))
        next((VENV / "lib").glob("python*/site-packages")).joinpath("llmctl_base.pth").write_text(f"{site}\n")
        subprocess.run([py, "-m", "pip", "install", "-q", "trl"], check=True)
    return py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="both sides: fp32, or bf16 autocast (TRL's own default, even on CPU)",
    )
    a = ap.parse_args()

    import torch

    from llmctl.data.chat_data import ItemBatches, import_data, read_rows
    from llmctl.export.hf import export_hf
    from llmctl.model.checkpoint import save_checkpoint
    from llmctl.model.transformer import ModelConfig, Transformer
    from llmctl.tokenizer.spm import Tokenizer
    from llmctl.train.dpo import DPOConfig, run_dpo
    from llmctl.train.reward import encode_prefs

    torch.set_num_threads(a.threads)
    py = ensure_venv()
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    import_data(HH, work / "prefs_all", "prefs", val_fraction=0.0)
    rows = [r for r in read_rows(work / "prefs_all")[0]][: a.pairs]
    texts = (
        [m["content"] for r in rows for m in r["prompt"]] + [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    )
    tok = Tokenizer.train(texts, vocab_size=2048)
    tok.save(work / "tok")
    tok = Tokenizer.load(work / "tok")
    cfg_m = ModelConfig(
        vocab_size=tok.vocab_size,
        n_layer=a.layers,
        n_head=max(1, a.d_model // 64),
        d_model=a.d_model,
        max_seq_len=a.max_len,
    )
    torch.manual_seed(0)
    save_checkpoint(work / "ck", Transformer(cfg_m), cfg_m, tok.path)
    export_hf(work / "ck", work / "hf")
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in rows))
    tr, _, counts = encode_prefs(tok, read_rows(data)[0], a.max_len, 0.0, 0)
    print(
        f"{len(tr)} pairs ({counts['truncated']} truncated at {a.max_len} tokens), model "
        f"{a.layers}x{a.d_model}, vocab {tok.vocab_size}, {a.steps} steps x {a.batch} pairs, beta {a.beta}"
    )

    # llmctl
    cfg = DPOConfig(beta=a.beta, max_len=a.max_len, val_fraction=0.0)
    t = cfg.train
    t.steps, t.batch_size, t.micro_batch, t.lr, t.warmup_steps, t.schedule = (
        a.steps,
        a.batch,
        a.batch,
        a.lr,
        0,
        "constant",
    )
    t.beta2, t.weight_decay, t.grad_clip, t.eval_every, t.ckpt_every, t.dtype, t.device = (
        0.999,
        0.0,
        1.0,
        0,
        0,
        a.dtype,
        "cpu",
    )
    t.log_every = 1
    order = ItemBatches(len(tr), a.batch, lambda idx: idx, t.seed)
    batches = [next(order) for _ in range(a.steps)]
    run_dpo(data, work / "ck", work / "run", cfg)
    ours = [json.loads(ln) for ln in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    ours = [r for r in ours if "loss" in r and "rewards/chosen" in r]

    # TRL, fed the same ids in the same order
    pinned = work / "trl_pairs.jsonl"
    with open(pinned, "w") as f:
        for idx in batches:
            for i in idx:
                c, r = tr[i]
                n = next(k for k, m in enumerate(c.mask) if m)
                f.write(
                    json.dumps({"prompt_ids": c.ids[:n], "chosen_ids": c.ids[n:], "rejected_ids": r.ids[n:]}) + "\n"
                )
    job = {
        "pairs": str(pinned),
        "model": str(work / "hf"),
        "out": str(work / "trl_out"),
        "result": str(work / "trl.json"),
        "steps": a.steps,
        "batch": a.batch,
        "beta": a.beta,
        "lr": a.lr,
        "threads": a.threads,
        "bf16": a.dtype == "bf16",
    }
    (work / "job.json").write_text(json.dumps(job))
    (work / "trl_run.py").write_text(TRL_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(a.threads),
    }
    t0 = time.time()
    subprocess.run([py, work / "trl_run.py", work / "job.json"], check=True, env=env, cwd=work)
    print(f"TRL run: {time.time() - t0:.1f} s wall including start-up")
    trl = json.loads((work / "trl.json").read_text())

    print(f"\n{'step':>4} {'metric':<20} {'llmctl':>12} {'TRL':>12} {'|diff|':>10}")
    worst_first, worst_all, worst_rel = 0.0, 0.0, 0.0  # loss/rewards: absolute; logps (sums of ~100s): relative
    for s, (o, h) in enumerate(zip(ours, trl["logs"]), 1):
        for name in METRICS:
            mine = o["loss"] if name == "loss" else o[name]
            diff = abs(mine - h[name])
            if name.startswith("logps/"):
                worst_rel = max(worst_rel, diff / max(abs(h[name]), 1e-12))
            else:
                worst_all = max(worst_all, diff)
                if s == 1:
                    worst_first = max(worst_first, diff)
            if s in (1, a.steps):
                print(f"{s:>4} {name:<20} {mine:>12.6f} {h[name]:>12.6f} {diff:>10.2e}")
    ours_s = (ours[-1]["elapsed_s"] - ours[0]["elapsed_s"]) / max(1, len(ours) - 1)
    trl_s = sum(trl["step_times"][1:]) / max(1, len(trl["step_times"]) - 1)
    print(
        f"\nloss and rewards/*: largest |diff| at the first step {worst_first:.2e} (target 1e-4), over all "
        f"{a.steps} steps {worst_all:.2e}; logps/*: largest relative diff {worst_rel:.1e}"
    )
    print(
        f"seconds/step after the first: llmctl {ours_s:.3f}, TRL {trl_s:.3f}; llmctl is {trl_s / ours_s:.2f}x TRL's speed"
    )
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
