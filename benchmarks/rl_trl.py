"""GRPO speed and per-step metrics: llmctl rl against TRL's GRPOTrainer, same model, prompts and settings.

    .venv/bin/python benchmarks/rl_trl.py [--steps 30] [--threads 2] [--work DIR] [--sft DIR/sft]

The model is benchmarks/rl.py's: a 2-layer d=64 model SFT'd briefly on "What is A plus B?" ->
"#### A+B" (A, B < 20), exported with `llmctl export --no-split-special-tokens` (the HF directory
TRL loads; TRL tokenizes the chat template itself, with special tokens as ids). Both trainers
then run GRPO on the same training prompts in the same chat format with the exact_match reward
(llmctl's, `llmctl eval`'s extraction, handed to TRL as a reward function): 8 prompts x G 8 = 64
completions per step, one optimizer step per generation (num_iterations 1), at most 8 new tokens,
temperature 1, beta 0, loss_type grpo, rewards scaled by the group's std, lr 5e-5 constant, no
warmup, no weight decay, Adam betas (0.9, 0.95), gradient clip 1.0, fp32. TRL runs in its own
virtualenv (benchmarks/.venvs/trl, see ../shared/PEERS.md), one run after the other.

Steps per second are timed from the end of step 1 to the end of the last step (generation, reward,
loss, backward and optimizer step all inside), so start-up and the first step's warm-up are out
of both. Per-step metrics (means over the run, with their standard errors) are compared under the
names both log. What differs: the order of the prompts (each shuffles with its own RNG) and the
sampling RNG, so the curves are two samples of the same process, not the same numbers.
Floor: llmctl >= 1.5x TRL's steps per second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
# (llmctl's name, TRL's name): the same formula under each (docs/rl.md)
METRICS = [
    ("reward", "reward"),
    ("reward_std", "reward_std"),
    ("frac_reward_zero_std", "frac_reward_zero_std"),
    ("completions/mean_length", "completions/mean_length"),
    ("completions/clipped_ratio", "completions/clipped_ratio"),
    ("clip_ratio", "clip_ratio/region_mean"),
]

TRL_SCRIPT = r"""
import json, sys, time
import torch
job = json.load(open(sys.argv[1]))
sys.path.insert(0, job["root"])  # llmctl's reward function (eval's answer extraction)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from llmctl.train.rl.rewards import exact_match_reward

torch.set_num_threads(job["threads"])
rows = [json.loads(l) for l in open(job["prompts"])]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                        for r in rows if r["split"] == "train"])

def exact_match(prompts, completions, answer, **kw):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return exact_match_reward(prompts, texts, answer=answer)

class Clock(TrainerCallback):
    def __init__(self): self.t = []
    def on_step_end(self, args, state, control, **kw): self.t.append(time.perf_counter())

model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(job["model"])
cfg = GRPOConfig(output_dir=job["out"], use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                 max_steps=job["steps"], logging_steps=1, per_device_train_batch_size=job["batch"],
                 gradient_accumulation_steps=1, num_generations=job["G"], max_completion_length=job["max_new"],
                 num_iterations=1, beta=job["beta"], loss_type="grpo", scale_rewards="group", temperature=1.0,
                 top_k=0, top_p=1.0, learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0,
                 weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
                 seed=job["seed"], dataloader_num_workers=0, disable_dropout=True)
clock = Clock()
trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=cfg, train_dataset=ds, processing_class=tok,
                      callbacks=[clock])
trainer.train()
logs = [h for h in trainer.state.log_history if "reward" in h]
json.dump({"logs": logs, "t": clock.t}, open(job["result"], "w"))
"""


def _rl_bench():
    spec = importlib.util.spec_from_file_location("rl_bench", ROOT / "benchmarks" / "rl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trl_venv() -> Path:
    spec = importlib.util.spec_from_file_location("dpo_bench", ROOT / "benchmarks" / "dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ensure_venv()


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)
    return m, math.sqrt(var / len(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rl = _rl_bench()
    rl.add_grpo_args(ap)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    from llmctl.export.hf import export_hf
    from llmctl.model.checkpoint import resolve_checkpoint
    from llmctl.train.rl.trainer import run_rl

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-trl-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    data, sft_dir, _ = rl.addition_sft(args, tmp)
    # TRL tokenizes the chat template itself: the usual Hugging Face special-token behaviour (see llmctl.export.hf_tokenizer)
    hf = export_hf(resolve_checkpoint(sft_dir), tmp / "hf", overwrite=True, split_special_tokens=False)
    batch = args.rollout_prompts * args.G

    # llmctl: no evaluation, one checkpoint at the end (after the last timed step)
    cfg = rl.grpo_config(args, args.steps, 0)
    cfg.train.seed = args.seed
    shutil.rmtree(tmp / "llmctl", ignore_errors=True)  # a fresh run each time (a finished one is not re-run)
    run_rl(data, sft_dir, tmp / "llmctl", cfg)
    ours = [json.loads(ln) for ln in (tmp / "llmctl" / "metrics.jsonl").read_text().splitlines()]
    ours = [r for r in ours if "reward" in r]
    ours_sps = (len(ours) - 1) / (ours[-1]["elapsed_s"] - ours[0]["elapsed_s"])

    py = trl_venv()
    job = {
        "root": str(ROOT),
        "model": str(hf),
        "prompts": str(data),
        "out": str(tmp / "trl"),
        "steps": args.steps,
        "batch": batch,
        "G": args.G,
        "max_new": args.max_new_tokens,
        "beta": args.beta,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "result": str(tmp / "trl.json"),
    }
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "trl_grpo.py").write_text(TRL_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([py, tmp / "trl_grpo.py", tmp / "job.json"], check=True, env=env)
    res = json.loads((tmp / "trl.json").read_text())
    theirs, t = res["logs"], res["t"]
    theirs_sps = (len(t) - 1) / (t[-1] - t[0])

    print(
        f"\n== GRPO, {batch} completions per step ({args.rollout_prompts} prompts x G {args.G}), "
        f"<= {args.max_new_tokens} new tokens, {args.steps} steps, {args.threads} threads"
    )
    print(f"{'':>28} {'llmctl':>16} {'TRL GRPOTrainer':>16}")
    print(f"{'steps/s (steps 2..N)':>28} {ours_sps:>16.2f} {theirs_sps:>16.2f}")
    for k, k_trl in METRICS:
        a = [r[k] for r in ours if k in r]
        b = [h[k_trl] for h in theirs if k_trl in h]
        fa = "%.3f +- %.3f" % mean_se(a) if a else "-"
        fb = "%.3f +- %.3f" % mean_se(b) if b else "-"
        print(f"{k:>28} {fa:>16} {fb:>16}")
    print(f"{'first step reward':>28} {ours[0]['reward']:>16.3f} {theirs[0]['reward']:>16.3f}")
    ratio = ours_sps / theirs_sps
    print(f"llmctl / TRL steps per second: {ratio:.2f}x (floor 1.5x) -> {'PASS' if ratio >= 1.5 else 'FAIL'}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; work dir {tmp}")


if __name__ == "__main__":
    main()
