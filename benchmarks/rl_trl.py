"""GRPO per option: llmctl rl against TRL's GRPOTrainer set the same way, same model, prompts and seeds.

    .venv/bin/python benchmarks/rl_trl.py [--variants grpo,bnpo,dr_grpo,dapo,gspo,clip_higher,mask_truncated]
        [--steps 30] [--seeds 0,1,2] [--lr 1e-4] [--threads 2] [--skip 2] [--work DIR] [--sft DIR/sft-seed0]

The model is benchmarks/rl.py's: a 2-layer d=64 model SFT'd for 250 steps on "What is A plus B?" ->
"#### A+B" (here A, B < 20, 80 held out: about 35% of sampled answers right), exported with
`llmctl export --no-split-special-tokens` (the HF directory TRL loads; TRL tokenizes the chat
template itself, with special tokens as ids). For each variant (VARIANTS: a `--loss-type`,
`--importance-sampling`, `--epsilon-high`, `--mask-truncated` and TRL's `loss_type`,
`importance_sampling_level`, `epsilon_high`, `mask_truncated_completions`) and each RL seed, both
trainers run GRPO from that model on the same training prompts in the same chat format with the
exact_match reward (llmctl's, `llmctl eval`'s extraction, handed to TRL as a reward function):
8 prompts x G 8 = 64 completions a generation, 2 optimizer steps of 32 per generation (TRL's
steps_per_generation 2, so the second step is off-policy and the clip ratios can be non-zero),
num_iterations 1, at most 8 new tokens (6 for mask_truncated, so that some completions are cut),
temperature 1, beta 0, epsilon 0.2, rewards scaled by the group's std, lr 1e-4 constant, no
warmup, no weight decay, Adam betas (0.9, 0.95), gradient clip 1.0, fp32. (At lr 5e-4 Adam's
first, sign-like step collapses the policy in both trainers, and 30 steps compare two chaotic
collapses; at 1e-4 the policy stays near its start and the clip ratios are still non-zero.)
TRL 1.16 runs in its own process (this venv's trl, or benchmarks/.venvs/trl), kept alive, and the
runs alternate: llmctl variant v seed s, then TRL v s, then the next, so a change of load on
the machine hits both sides alike.

Per-step metrics are compared under the names both log (METRICS), pooled over the seeds: the
mean and its standard error each side, and z = |difference| / combined standard error. Rollout
metrics are taken once per generation. The runs of the two sides are samples of the same
process, not the same numbers: with the same seed both draw the same prompts (the same seeded
permutation) but sample with their own RNGs. With 7 x 9 comparisons, about 3 land beyond 2
standard errors by chance when the two agree; the verdict is PASS when none is beyond the
Bonferroni bound for 5% over all comparisons together (z 3.35 for 63).

Steps per second: each run is timed from the end of step `--skip` (default: the first
generation's steps, so warm-up is left out) to the end of the last step (generation, reward,
loss, backward and optimizer step all inside; the same number of generations on both sides);
per variant the median over the seeds each side, and their ratio. The completion tokens each
side generated per timed step are printed beside it (a policy that writes longer answers is
slower for that reason alone). Floor: llmctl >= 2x TRL's steps per second for each variant;
time it alone on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

TRL_WORKER = r"""
import json, os, sys, time
results = os.fdopen(os.dup(1), "w", buffering=1)  # the channel back to the benchmark: one line a job
os.dup2(2, 1)  # TRL's own prints go to its log
import torch
common = json.load(open(sys.argv[1]))
sys.path.insert(0, common["root"])  # llmctl's reward function (eval's answer extraction)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from llmctl.train.rl.rewards import exact_match_reward

torch.set_num_threads(common["threads"])
rows = [json.loads(l) for l in open(common["prompts"])]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                        for r in rows if r["split"] == "train"])

def exact_match(prompts, completions, answer, **kw):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return exact_match_reward(prompts, texts, answer=answer)

class Clock(TrainerCallback):
    def __init__(self): self.t = []
    def on_step_end(self, args, state, control, **kw): self.t.append(time.perf_counter())

results.write("ready\n")
for line in sys.stdin:
    job = json.loads(line)
    v = dict(job["variant"])
    max_new = v.pop("max_new_tokens", common["max_new"])
    model = AutoModelForCausalLM.from_pretrained(common["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(common["model"])
    cfg = GRPOConfig(output_dir=job["out"], use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                     max_steps=common["steps"], logging_steps=1, per_device_train_batch_size=common["batch"],
                     gradient_accumulation_steps=1, steps_per_generation=common["steps_per_generation"],
                     num_generations=common["G"], max_completion_length=max_new, num_iterations=1, beta=common["beta"],
                     epsilon=0.2, scale_rewards="group", temperature=1.0, top_k=0, top_p=1.0,
                     learning_rate=common["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, seed=job["seed"],
                     dataloader_num_workers=0, disable_dropout=True, disable_tqdm=True, **v)
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[clock])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    json.dump({"logs": logs, "t": clock.t}, open(job["result"], "w"))
    results.write("done\n")
"""


class TRLWorker:
    """TRL in its own process (its interpreter may be another venv), kept alive between runs, so that
    its runs can alternate with llmctl's: one GRPOTrainer run per `run` call."""

    def __init__(self, tmp: Path, common: dict[str, Any]):
        (tmp / "trl_worker.py").write_text(TRL_WORKER)
        (tmp / "trl_common.json").write_text(json.dumps(common))
        self.log = tmp / "trl.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [str(trl_python()), str(tmp / "trl_worker.py"), str(tmp / "trl_common.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),
            text=True,
            env=env,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        line = self.proc.stdout.readline().strip()
        if line != word:
            tail = "\n".join(self.log.read_text().splitlines()[-30:])
            sys.exit(f"TRL worker failed (log {self.log}):\n{tail}")

    def run(self, variant: dict, seed: int, out: Path) -> dict[str, Any]:
        job = {"variant": variant, "seed": seed, "out": str(out), "result": str(out) + ".json"}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self._expect("done")
        return json.loads(Path(job["result"]).read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


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


def compare(a: list[float], b: list[float]) -> tuple[str, float]:
    """'mean +- se' of each side and z, the difference of the means in combined standard errors."""
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    se = math.hypot(sa, sb)
    z = 0.0 if abs(ma - mb) <= 1e-12 else abs(ma - mb) / se if se > 0 else math.inf
    return f"{ma:.3f} +- {sa:.3f}  {mb:.3f} +- {sb:.3f}", z


def steps_per_s(times: list[float], skip: int) -> float:
    """Steps per second from the end of step `skip` to the end of the last step."""
    return (len(times) - skip) / (times[-1] - times[skip - 1])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def _tokens_per_step(lengths: list[tuple[int, float]], skip: int, n_steps: int, gen_batch: int) -> float:
    """Completion tokens generated per step in steps skip+1..N, from (step index, mean length) per generation."""
    return sum(m * gen_batch for i, m in lengths if i >= skip) / (n_steps - skip)


def run_llmctl(rl: Any, args: argparse.Namespace, data: Path, sft_dir: Path, run: Path, name: str, seed: int):
    from llmctl.train.rl.trainer import run_rl

    cfg = rl.grpo_config(args, args.steps, 0)
    cfg.train.seed = seed
    cfg.val_limit = 0  # no held-out evaluation: the runs are compared on their rollout metrics
    for k, v in VARIANTS[name][0].items():
        setattr(cfg, k, v)
    cfg.__post_init__()
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (a finished one is not re-run)
    with open(run.parent / "llmctl.log", "a") as log, contextlib.redirect_stdout(log):
        run_rl(data, sft_dir, run, cfg)
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rl = _rl_bench()
    rl.add_grpo_args(ap)
    ap.set_defaults(n=20, held_out=80, lr=1e-4, steps_per_rollout=2, threads=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", default="0,1,2", help="RL seeds, one run a side each; metrics pooled over them")
    ap.add_argument("--skip", type=int, default=None, help="steps left out of the timing (default: one generation's)")
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",") if x != ""]
    every = args.steps_per_rollout
    skip = every if args.skip is None else args.skip
    if not seeds or not 1 <= skip < args.steps - 1:
        ap.error("need at least one seed and 1 <= --skip < --steps - 1")
    import torch

    from llmctl.export.hf import export_hf
    from llmctl.model.checkpoint import resolve_checkpoint

    torch.set_num_threads(args.threads)
    t_start = time.time()
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-trl-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    data, sft_dir, _ = rl.addition_sft(args, tmp)
    # TRL tokenizes the chat template itself: the usual Hugging Face special-token behaviour (see llmctl.export.hf_tokenizer)
    hf = export_hf(resolve_checkpoint(sft_dir), tmp / "hf", overwrite=True, split_special_tokens=False)
    gen_batch = args.rollout_prompts * args.G
    common = {
        "root": str(ROOT),
        "model": str(hf),
        "prompts": str(data),
        "steps": args.steps,
        "batch": gen_batch // every,
        "steps_per_generation": every,
        "G": args.G,
        "max_new": args.max_new_tokens,
        "beta": args.beta,
        "lr": args.lr,
        "threads": args.threads,
    }
    trl = TRLWorker(tmp, common)
    (tmp / "llmctl").mkdir(exist_ok=True)
    (tmp / "trl").mkdir(exist_ok=True)
    ours: dict[str, list[list[dict]]] = {n: [] for n in names}
    theirs: dict[str, list[dict]] = {n: [] for n in names}
    for seed in seeds:  # llmctl and TRL alternate, run by run, so that a change of load hits both alike
        for name in names:
            ours[name].append(run_llmctl(rl, args, data, sft_dir, tmp / "llmctl" / f"{name}-{seed}", name, seed))
            theirs[name].append(trl.run(VARIANTS[name][1], seed, tmp / "trl" / f"{name}-{seed}"))
            print(f"seed {seed} {name}: done ({time.time() - t_start:.0f} s)", flush=True)
    trl.close()

    print(
        f"\n== GRPO per option: {gen_batch} completions a generation ({args.rollout_prompts} prompts x G {args.G}), "
        f"{every} steps of {gen_batch // every} each, {args.steps} steps, lr {args.lr:g}, {args.threads} threads, "
        f"RL seeds {args.seeds} (metrics pooled over the seeds; speed: medians over them, steps {skip + 1}-{args.steps})"
    )
    zs: list[tuple[str, float]] = []
    ratios = {}
    for name in names:
        print(f"\n-- {name}: llmctl {VARIANTS[name][0]}  TRL {VARIANTS[name][1]}")
        print(f"{'metric':>28}  {'llmctl (mean +- se)':>17}  {'TRL GRPOTrainer':>17}  z (|diff| / combined se)")
        for k, k_trl, per_gen in METRICS:
            a = [r[k] for run in ours[name] for i, r in enumerate(run) if k in r and (not per_gen or i % every == 0)]
            b = [h[k_trl] for run in theirs[name] for h in run["logs"] if h.get(k_trl) is not None]
            if not a or not b:
                print(f"{k:>28}  {'(not logged: ' + ('llmctl' if not a else 'TRL') + ')':>37}")
                zs.append((f"{name} {k}", math.inf))
                continue
            text, z = compare(a, b)
            zs.append((f"{name} {k}", z))
            print(f"{k:>28}  {text}  {z:5.2f}{'  (> 2)' if z > 2 else ''}")
        for side, runs in (
            ("llmctl", [[r["reward"] for i, r in enumerate(run) if i % every == 0] for run in ours[name]]),
            ("TRL", [[h["reward"] for h in run["logs"] if h.get("reward") is not None] for run in theirs[name]]),
        ):
            print(
                f"{'reward per generation ' + side:>28}  " + " | ".join(" ".join(f"{x:.2f}" for x in r) for r in runs)
            )
        ours_sps = [steps_per_s([r["elapsed_s"] for r in run], skip) for run in ours[name]]
        theirs_sps = [steps_per_s(run["t"], skip) for run in theirs[name]]
        ours_tok = [
            _tokens_per_step(
                [(i, r["completions/mean_length"]) for i, r in enumerate(run) if i % every == 0],
                skip,
                len(run),
                gen_batch,
            )
            for run in ours[name]
        ]
        theirs_tok = [
            _tokens_per_step(
                [
                    (i, h["completions/mean_length"])
                    for i, h in enumerate(run["logs"])
                    if "completions/mean_length" in h
                ],
                skip,
                len(run["logs"]),
                gen_batch,
            )
            for run in theirs[name]
        ]
        ratios[name] = median(ours_sps) / median(theirs_sps)
        print(
            f"{'steps/s per seed':>28}  {' '.join(f'{x:.1f}' for x in ours_sps):>17}  "
            f"{' '.join(f'{x:.1f}' for x in theirs_sps):>17}"
        )
        print(f"{'completion tokens per step':>28}  {median(ours_tok):>17.1f}  {median(theirs_tok):>17.1f}  (medians)")
        print(
            f"{'steps/s (median)':>28}  {median(ours_sps):>17.2f}  {median(theirs_sps):>17.2f}  "
            f"llmctl/TRL {ratios[name]:.2f}x"
        )
    beyond = [k for k, z in zs if z > 2]
    bound = statistics.NormalDist().inv_cdf(1 - 0.025 / len(zs))  # Bonferroni: 5% family-wise over all comparisons
    far = [f"{k} (z {z:.1f})" for k, z in zs if z > bound]
    print(
        f"\nmetrics: {len(beyond)} of {len(zs)} comparisons beyond 2 standard errors"
        + (f" ({', '.join(beyond)})" if beyond else "")
        + f"; about {0.0455 * len(zs):.1f} expected by chance when the two agree. "
        f"Beyond {bound:.2f} (5% over all {len(zs)} together): {', '.join(far) if far else 'none'} -> "
        f"{'PASS' if not far else 'FAIL'}"
    )
    print(
        "llmctl / TRL steps per second: "
        + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())
        + f" (floor 2x) -> {'PASS' if min(ratios.values()) >= 2 else 'FAIL'}"
    )
    print(
        f"{time.time() - t_start:.0f} s; load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"work dir {tmp}"
    )


if __name__ == "__main__":
    main()
