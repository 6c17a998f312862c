"""GRPO per option: llmctl rl against TRL's GRPOTrainer set the same way, same model, prompts and seed.

    .venv/bin/python benchmarks/rl_trl.py [--variants grpo,bnpo,dr_grpo,dapo,gspo,clip_higher,mask_truncated]
        [--steps 30] [--threads 2] [--work DIR] [--sft DIR/sft-seed0]

The model is benchmarks/rl.py's: a 2-layer d=64 model SFT'd for 250 steps on "What is A plus B?" ->
"#### A+B" (here A, B < 20, 80 held out: about 40% of sampled answers right), exported with `llmctl export --no-split-special-tokens` (the HF directory TRL loads;
TRL tokenizes the chat template itself, with special tokens as ids). For each variant (VARIANTS:
a `--loss-type`, `--importance-sampling`, `--epsilon-high`, `--mask-truncated` and TRL's
`loss_type`, `importance_sampling_level`, `epsilon_high`, `mask_truncated_completions`), both
trainers run GRPO from that model on the same training prompts in the same chat format with the
exact_match reward (llmctl's, `llmctl eval`'s extraction, handed to TRL as a reward function):
8 prompts x G 8 = 64 completions a generation, 2 optimizer steps of 32 per generation (TRL's
steps_per_generation 2, so the second step is off-policy and the clip ratios can be non-zero),
num_iterations 1, at most 8 new tokens (6 for mask_truncated, so that some completions are cut),
temperature 1, beta 0, epsilon 0.2, rewards scaled by the group's std, lr 5e-4 constant, no
warmup, no weight decay, Adam betas (0.9, 0.95), gradient clip 1.0, fp32. TRL 1.16 runs in its
own process (this venv's trl, or benchmarks/.venvs/trl), all variants one after the other.

Per-step metrics are compared under the names both log (METRICS): the mean over the run and its
standard error each side, and PASS when the two means differ by at most 2 combined standard
errors (sqrt(se_a^2 + se_b^2)). Rollout metrics are taken once per generation. The two runs are
two samples of the same process, not the same numbers: each trainer shuffles the prompts and
samples with its own RNG. Steps per second are timed from the end of step 1 to the end of the
last step (generation, reward, loss, backward and optimizer step all inside). Floor: llmctl >= 2x
TRL's steps per second for each variant; time it alone on the machine.
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

# name -> (llmctl RLConfig fields, TRL GRPOConfig fields); max_new_tokens applies to both
VARIANTS: dict[str, tuple[dict, dict]] = {
    "grpo": ({"loss_type": "grpo"}, {"loss_type": "grpo"}),
    "bnpo": ({"loss_type": "bnpo"}, {"loss_type": "bnpo"}),
    "dr_grpo": ({"loss_type": "dr_grpo"}, {"loss_type": "dr_grpo"}),
    "dapo": ({"loss_type": "dapo"}, {"loss_type": "dapo"}),
    "gspo": (
        {"loss_type": "dapo", "importance_sampling": "sequence"},
        {"loss_type": "dapo", "importance_sampling_level": "sequence"},
    ),
    "clip_higher": ({"loss_type": "dapo", "epsilon_high": 0.28}, {"loss_type": "dapo", "epsilon_high": 0.28}),
    "mask_truncated": (
        {"loss_type": "dapo", "mask_truncated": True, "max_new_tokens": 6},
        {"loss_type": "dapo", "mask_truncated_completions": True, "max_new_tokens": 6},
    ),
}

# (llmctl's name, TRL's name, once per generation): the same formula under each (docs/rl.md)
METRICS = [
    ("reward", "reward", True),
    ("reward_std", "reward_std", True),
    ("frac_reward_zero_std", "frac_reward_zero_std", True),
    ("completions/mean_length", "completions/mean_length", True),
    ("completions/clipped_ratio", "completions/clipped_ratio", True),
    ("entropy", "entropy", False),
    ("clip_ratio/low_mean", "clip_ratio/low_mean", False),
    ("clip_ratio/high_mean", "clip_ratio/high_mean", False),
    ("clip_ratio/region_mean", "clip_ratio/region_mean", False),
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

out = {}
for name, v in job["variants"].items():
    v = dict(v)
    max_new = v.pop("max_new_tokens", job["max_new"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(job["model"])
    cfg = GRPOConfig(output_dir=job["out"] + "/" + name, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                     max_steps=job["steps"], logging_steps=1, per_device_train_batch_size=job["batch"],
                     gradient_accumulation_steps=1, steps_per_generation=job["steps_per_generation"],
                     num_generations=job["G"], max_completion_length=max_new, num_iterations=1, beta=job["beta"],
                     epsilon=0.2, scale_rewards="group", temperature=1.0, top_k=0, top_p=1.0,
                     learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, seed=job["seed"],
                     dataloader_num_workers=0, disable_dropout=True, **v)
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[clock])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    out[name] = {"logs": logs, "t": clock.t}
    print(f"TRL {name}: {len(logs)} steps", flush=True)
json.dump(out, open(job["result"], "w"))
"""


def _rl_bench():
    spec = importlib.util.spec_from_file_location("rl_bench", ROOT / "benchmarks" / "rl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trl_python() -> Path:
    """This interpreter when it has trl, else benchmarks/.venvs/trl's (created on first use)."""
    if importlib.util.find_spec("trl") is not None:
        return Path(sys.executable)
    spec = importlib.util.spec_from_file_location("dpo_bench", ROOT / "benchmarks" / "dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ensure_venv()


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)
    return m, math.sqrt(var / len(xs))


def agree(a: list[float], b: list[float]) -> tuple[str, bool]:
    """'mean +- se' of each side and whether the means are within 2 combined standard errors."""
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    ok = abs(ma - mb) <= 2 * math.hypot(sa, sb) + 1e-9
    return f"{ma:.3f} +- {sa:.3f}  {mb:.3f} +- {sb:.3f}", ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rl = _rl_bench()
    rl.add_grpo_args(ap)
    ap.set_defaults(n=20, held_out=80, lr=5e-4, steps_per_rollout=2, threads=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
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
    gen_batch = args.rollout_prompts * args.G
    every = args.steps_per_rollout

    ours: dict[str, list[dict]] = {}
    for name in names:
        cfg = rl.grpo_config(args, args.steps, 0)
        cfg.train.seed = args.seed
        for k, v in VARIANTS[name][0].items():
            setattr(cfg, k, v)
        cfg.__post_init__()
        run = tmp / "llmctl" / name
        shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (a finished one is not re-run)
        run_rl(data, sft_dir, run, cfg)
        recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        ours[name] = [r for r in recs if "loss" in r]

    job = {
        "root": str(ROOT),
        "model": str(hf),
        "prompts": str(data),
        "out": str(tmp / "trl"),
        "steps": args.steps,
        "batch": gen_batch // every,
        "steps_per_generation": every,
        "G": args.G,
        "max_new": args.max_new_tokens,
        "beta": args.beta,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "variants": {n: VARIANTS[n][1] for n in names},
        "result": str(tmp / "trl.json"),
    }
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "trl_grpo.py").write_text(TRL_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([trl_python(), tmp / "trl_grpo.py", tmp / "job.json"], check=True, env=env)
    theirs_all = json.loads((tmp / "trl.json").read_text())

    print(
        f"\n== GRPO per option: {gen_batch} completions a generation ({args.rollout_prompts} prompts x G {args.G}), "
        f"{every} steps of {gen_batch // every} each, {args.steps} steps, lr {args.lr:g}, {args.threads} threads"
    )
    failed, ratios = [], {}
    for name in names:
        mine, theirs, t = ours[name], theirs_all[name]["logs"], theirs_all[name]["t"]
        ours_sps = (len(mine) - 1) / (mine[-1]["elapsed_s"] - mine[0]["elapsed_s"])
        theirs_sps = (len(t) - 1) / (t[-1] - t[0])
        ratios[name] = ours_sps / theirs_sps
        print(f"\n-- {name}: llmctl {VARIANTS[name][0]}  TRL {VARIANTS[name][1]}")
        print(f"{'metric':>28}  {'llmctl (mean +- se)':>17}  {'TRL GRPOTrainer':>17}  within 2 se")
        for k, k_trl, per_gen in METRICS:
            a = [r[k] for i, r in enumerate(mine) if k in r and (not per_gen or i % every == 0)]
            b = [h[k_trl] for h in theirs if h.get(k_trl) is not None]
            if not a or not b:
                print(f"{k:>28}  {'(not logged: ' + ('llmctl' if not a else 'TRL') + ')':>37}")
                failed.append(f"{name} {k}")
                continue
            text, ok = agree(a, b)
            print(f"{k:>28}  {text}  {'PASS' if ok else 'FAIL'}")
            if not ok:
                failed.append(f"{name} {k}")
        for side, vals in (
            ("llmctl", [r["reward"] for i, r in enumerate(mine) if "reward" in r and i % every == 0]),
            ("TRL", [h["reward"] for h in theirs if h.get("reward") is not None]),
        ):
            print(f"{'reward per generation ' + side:>28}  {' '.join(f'{x:.2f}' for x in vals)}")
        print(f"{'steps/s (steps 2..N)':>28}  {ours_sps:>17.2f}  {theirs_sps:>17.2f}  llmctl/TRL {ratios[name]:.2f}x")
    print(
        f"\nmetrics: {'all within 2 standard errors' if not failed else 'outside 2 standard errors: ' + ', '.join(failed)}"
    )
    print(
        "llmctl / TRL steps per second: "
        + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())
        + f" (floor 2x) -> {'PASS' if min(ratios.values()) >= 2 else 'FAIL'}"
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; work dir {tmp}")


if __name__ == "__main__":
    main()
