"""The modern small-model recipe on TinyStories: AdamW vs Muon vs the full recipe, and nanoGPT as a peer.

Data: the shared TinyStories slice (paragraphs as documents, every 10th held out), a byte-level
BPE tokenizer trained on the training paragraphs with llmctl's own trainer. Every llmctl variant
runs llmctl's real training loop (`llmctl.train.loop.train`: packing, schedule, clipping,
validation) on the same windows in the same order, at equal tokens, one torch thread.

Two measurements:

- `equal-tokens` (deterministic for a seed, so it may run on a busy machine): each variant x seed
  for --steps steps; reports the final val loss and the tokens each run needs to reach the AdamW
  baseline's final val loss (mean over seeds), as a fraction of the budget (linear interpolation
  between evaluations; "> 1" when not reached), mean and spread over seeds. Writes
  OUT/results.json, the table on stdout, and a val-loss-vs-time plot (--plot).
- `equal-time` (a speed figure: run it alone on a quiet machine): llmctl's variants and nanoGPT's
  `train.py` (--nanogpt DIR, a checkout of karpathy/nanoGPT, the file unchanged, run as a
  subprocess) at the same shape, tokens per step, threads and wall-clock: each side first times a
  few steps once (at the first seed), then trains for as many steps as fit in --seconds, that step
  count for every seed of --seeds; the val loss is reported in bits per byte (the tokenizers cancel
  out), per side the mean, the min-max spread and each seed's value, and whether the best llmctl
  variant at nanoGPT's parameter count (within 5%) ends below nanoGPT at every seed (PASS/FAIL).
  nanoGPT reads the same token ids, prepared as its prepare.py scripts write them (train.bin /
  val.bin uint16, meta.pkl with the vocab size). Its train.py seeds torch with
  `torch.manual_seed(1337 + seed_offset)` (the DDP rank; no option sets it), so it runs under
  NANOGPT_SEED_RUNNER: that adds the seed to every `torch.manual_seed` call and executes train.py
  with runpy as `__main__` (seed 0 is nanoGPT's own run; another seed changes its initialisation and
  its batch sampling, both drawn from torch's global generator).

    .venv/bin/python benchmarks/recipe.py equal-tokens --seeds 0,1,2 --plot docs/recipe_loss.png
    .venv/bin/python benchmarks/recipe.py equal-time --nanogpt /path/to/nanoGPT --seconds 40 --threads 2 \
        --seeds 0,1,2 --variants adamw,recipe_tied
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep them off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]

import argparse
import hashlib
import json
import math
import os
import pickle
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.tokenizer.spm import Tokenizer
from llmctl.train.loop import TrainConfig, train
from llmctl.train.pretrain import PackedBatches, PretrainConfig, lm_loss, make_evaluate, recipe_flags

REPO = Path(__file__).resolve().parent.parent
# the shared data beside the checkout (../shared, or ../../shared from a worktree)
DATA = (
    next((p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()), REPO.parent / "shared")
    / "data/tinystories/tinystories_valid_head.txt"
)

# Each variant: (optimizer settings, model switches). "recipe" is every switch on top of Muon.
UNTIED = {"tie_embeddings": False}
LRS = {"embed_lr": 0.05, "head_lr": 0.004}
VARIANTS: dict[str, tuple[dict, dict]] = {
    "adamw": ({}, {}),
    "adamw_lr3e-3": ({"lr": 3e-3}, {}),  # AdamW at a learning rate tuned for this short run, not the default
    "muon": ({"optimizer": "muon"}, {}),
    "muon+qk_norm": ({"optimizer": "muon"}, {"qk_norm": True}),
    "muon+relu2": ({"optimizer": "muon"}, {"mlp_act": "relu2"}),
    "muon+zero_init": ({"optimizer": "muon"}, {"zero_init_proj": True}),
    "muon+softcap": ({"optimizer": "muon"}, {"logit_softcap": 15.0}),
    "muon+untied_lrs": ({"optimizer": "muon", **LRS}, UNTIED),
    "recipe": (
        {"optimizer": "muon", **LRS},
        {"qk_norm": True, "mlp_act": "relu2", "zero_init_proj": True, "logit_softcap": 15.0, **UNTIED},
    ),
    # the recipe at the tied parameter count (nanoGPT's): one embedding, at embed_lr
    "recipe_tied": (
        {"optimizer": "muon", "embed_lr": LRS["embed_lr"]},
        {"qk_norm": True, "mlp_act": "relu2", "zero_init_proj": True, "logit_softcap": 15.0},
    ),
}
# the recipe without what `llmctl export` cannot map with ReLU^2 (QK-norm, soft-cap): an ArceeForCausalLM
VARIANTS["exportable"] = (
    {"optimizer": "muon", **LRS},
    {"mlp_act": "relu2", "zero_init_proj": True, **UNTIED},
)
# `--recipe modern` as llmctl ships it
VARIANTS["modern"] = (
    {k.split(".", 1)[1]: v for k, v in recipe_flags("modern").items() if k.startswith("train.")},
    {k.split(".", 1)[1]: v for k, v in recipe_flags("modern").items() if k.startswith("model.")},
)


# ----------------------------------------------------------------------------- data


def prepare(path: Path, vocab: int, work: Path) -> dict:
    """Tokenize the slice: train/val token streams (each paragraph + EOS) and val bytes per token."""
    paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    train_docs = [p for i, p in enumerate(paras) if i % 10 != 9]
    val_docs = [p for i, p in enumerate(paras) if i % 10 == 9]
    tok = Tokenizer.train(train_docs, vocab)
    tok.save(work / "tok")

    def stream(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [tok.encode(d) + [tok.eos_id] for d in docs]
        offs = np.cumsum([0] + [len(x) for x in ids])
        return np.concatenate([np.asarray(x, dtype=np.int32) for x in ids]), offs

    tr, tr_off = stream(train_docs)
    va, va_off = stream(val_docs)
    val_bytes = sum(len(d.encode("utf-8")) + 2 for d in val_docs)  # + the blank line each EOS stands for
    return {
        "tok": tok,
        "train": (tr, tr_off),
        "val": (va, va_off),
        "bytes_per_token": val_bytes / len(va),
        "eos": tok.eos_id,
        "vocab": tok.vocab_size,
    }


# ----------------------------------------------------------------------------- llmctl


def model_cfg(args, data: dict, switches: dict) -> ModelConfig:
    return ModelConfig(
        vocab_size=data["vocab"],
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        max_seq_len=args.seq_len,
        **switches,
    )


def run_llmctl(name: str, seed: int, steps: int, args, data: dict, work: Path, eval_every: int | None = None) -> dict:
    """One llmctl run; returns its val-loss curve [(step, tokens, elapsed_s, val_loss)] and params.
    elapsed_s is training time up to that step (the loop stamps a step before its evaluation)."""
    opt, switches = VARIANTS[name]
    torch.manual_seed(seed)
    mc = model_cfg(args, data, switches)
    model = Transformer(mc)
    tc = TrainConfig(
        steps=steps,
        batch_size=args.batch,
        micro_batch=args.batch,
        warmup_steps=max(1, steps // 10),
        eval_every=eval_every or args.eval_every,
        ckpt_every=steps,
        seed=seed,
        muon_momentum_warmup=max(1, steps // 3),
        log_every=10**9,
        **{"lr": args.lr, **opt},
    )
    flat, offs = data["train"]
    batches = PackedBatches(flat, offs, args.seq_len, args.batch, seed, data["eos"])
    pc = PretrainConfig(
        seq_len=args.seq_len, batch_tokens=args.batch * args.seq_len, val_tokens=len(data["val"][0]), train=tc
    )
    evaluate = make_evaluate(*data["val"], pc, data["eos"])
    run = work / f"{name}-s{seed}-{steps}"
    t0 = time.time()
    train(model, mc, lm_loss, batches, tc, run, evaluate=evaluate)
    wall = time.time() - t0
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in recs if "elapsed_s" in r}
    tokens = {r["step"]: r["tokens"] for r in recs if "tokens" in r}
    curve = [(r["step"], tokens[r["step"]], elapsed[r["step"]], r["val_loss"]) for r in recs if "val_loss" in r]
    return {"curve": curve, "params": model.num_params(), "wall_s": wall}


def tokens_to_reach(curve: list, target: float) -> float:
    """Tokens at which the val curve first reaches `target` (linear between evaluations); inf if never."""
    prev = (0, math.inf)
    for _, tokens, _, loss in curve:
        if loss <= target:
            t0, l0 = prev
            if not math.isfinite(l0):
                return float(tokens)
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        prev = (tokens, loss)
    return math.inf


def equal_tokens(args, data: dict, work: Path) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    runs = {n: [run_llmctl(n, s, args.steps, args, data, work) for s in seeds] for n in names}
    base = statistics.mean(r["curve"][-1][3] for r in runs["adamw"]) if "adamw" in runs else args.baseline
    budget = args.steps * args.batch * args.seq_len
    rows = []
    for n, rs in runs.items():
        finals = [r["curve"][-1][3] for r in rs]
        frac = [tokens_to_reach(r["curve"], base) / budget for r in rs] if base is not None else []
        rows.append(
            {
                "variant": n,
                "params": rs[0]["params"],
                "val_loss_mean": statistics.mean(finals),
                "val_loss_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "val_bpb_mean": statistics.mean(finals) / math.log(2) / data["bytes_per_token"],
                "tokens_to_baseline": frac,
            }
        )
    print(
        f"\nequal tokens: {budget:,} tokens a run ({args.steps} steps x {args.batch} x {args.seq_len}), seeds {seeds}"
    )
    print(f"AdamW baseline final val loss (mean): {base:.4f}" if base is not None else "")
    print(
        "| variant | params | final val loss (mean ± sd) | val bits/byte | tokens to AdamW's final loss (mean ± sd) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        fr = [f for f in r["tokens_to_baseline"] if math.isfinite(f)]
        if r["variant"] == "adamw":
            reach = "1.00x (the target: its own mean)"
        elif len(fr) == len(r["tokens_to_baseline"]) and fr:
            sd = statistics.stdev(fr) if len(fr) > 1 else 0.0
            reach = f"{statistics.mean(fr):.2f}x ± {sd:.2f}"
        else:
            reach = f"not reached in {len(r['tokens_to_baseline']) - len(fr)} of {len(r['tokens_to_baseline'])}"
        print(
            f"| {r['variant']} | {r['params']:,} | {r['val_loss_mean']:.4f} ± {r['val_loss_sd']:.4f} | "
            f"{r['val_bpb_mean']:.4f} | {reach} |"
        )
    return {"mode": "equal-tokens", "budget_tokens": budget, "baseline": base, "rows": rows, "runs": runs}


# ----------------------------------------------------------------------------- nanoGPT

# Runs nanoGPT's train.py, unchanged, at another seed: argv = SEED SCRIPT [train.py's arguments].
# train.py calls torch.manual_seed(1337 + seed_offset) once, before it builds the model and samples
# batches (torch.randint on the global generator), so adding SEED there changes both; SEED 0 is
# exactly nanoGPT's own run. The script's folder goes first on sys.path, as `python train.py` does
# (for its `from model import ...`); its configurator reads the remaining arguments from sys.argv.
NANOGPT_SEED_RUNNER = """\
import os, runpy, sys
import torch
seed, script = int(sys.argv[1]), sys.argv[2]
_manual_seed = torch.manual_seed
torch.manual_seed = lambda s: _manual_seed(s + seed)
sys.argv = [script, *sys.argv[3:]]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""


def nanogpt_command(seed: int, train_args: list[str], script: str = "train.py") -> list[str]:
    """The command that runs nanoGPT's `script` (default train.py, relative to the checkout it runs
    in) with `train_args` and every torch.manual_seed call offset by `seed`."""
    return [sys.executable, "-c", NANOGPT_SEED_RUNNER, str(seed), script, *train_args]


def check_seed_runner(repo: Path, work: Path) -> None:
    """On the given nanoGPT checkout, before anything is timed: an evaluation-only run of train.py
    (tiny model, random ids) under NANOGPT_SEED_RUNNER at seed 0 prints the same step-0 losses as
    plain `python train.py`, seed 1 prints others, and train.py's bytes are unchanged; SystemExit
    naming what failed otherwise. (The suite tests the runner on a nanoGPT-shaped train.py; this
    is the same check on the real one, which the suite cannot fetch.)"""
    if not (repo / "train.py").is_file():
        raise SystemExit(f"--nanogpt {repo}: no train.py there (a karpathy/nanoGPT checkout is needed)")
    ids = np.random.default_rng(0).integers(0, 64, 4000)
    prepared = prepare_nanogpt({"train": (ids[:3000], None), "val": (ids[3000:], None), "vocab": 64}, work)
    before = hashlib.sha256((repo / "train.py").read_bytes()).hexdigest()
    args = [f"--dataset={prepared}", f"--out_dir={work / 'out'}", "--device=cpu", "--compile=False"]
    args += ["--dtype=float32", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2"]
    args += ["--max_iters=0", "--eval_iters=2", "--eval_only=True"]

    def step0(cmd: list[str]) -> str:
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        found = [ln for ln in r.stdout.splitlines() if ln.startswith("step 0:")]
        if r.returncode != 0 or not found:
            raise SystemExit(
                f"nanoGPT seed-runner check: {' '.join(cmd[:3])}... failed:\n{r.stdout[-800:]}{r.stderr[-800:]}"
            )
        return found[0]

    plain = step0([sys.executable, "train.py", *args])
    if step0(nanogpt_command(0, args)) != plain:
        raise SystemExit("nanoGPT seed-runner check: seed 0 does not reproduce plain train.py's step-0 losses")
    if step0(nanogpt_command(1, args)) == plain:
        raise SystemExit(
            "nanoGPT seed-runner check: seed 1 gives plain train.py's step-0 losses (the seed is not used)"
        )
    if hashlib.sha256((repo / "train.py").read_bytes()).hexdigest() != before:
        raise SystemExit("nanoGPT seed-runner check: train.py changed")
    print(f"nanoGPT seed runner checked on {repo}: seed 0 = plain train.py, seed 1 differs, train.py unchanged")


def prepare_nanogpt(data: dict, work: Path) -> Path:
    """train.bin / val.bin (uint16 ids) and meta.pkl, as nanoGPT's prepare.py scripts write them."""
    d = work / "nanogpt_data"
    d.mkdir(parents=True, exist_ok=True)
    data["train"][0].astype(np.uint16).tofile(d / "train.bin")
    data["val"][0].astype(np.uint16).tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": data["vocab"]}, f)
    return d


def run_nanogpt(repo: Path, seed: int, steps: int, args, data: dict, work: Path, prepared: Path) -> dict:
    """nanoGPT's train.py, unchanged, under NANOGPT_SEED_RUNNER (cwd = the checkout, for its
    configurator.py); returns its val curve [(step, tokens, elapsed_s, val_loss)] stamped as its lines
    arrive (unbuffered): from its first training step to the log line of the step before the
    evaluation (so, as for llmctl, evaluation time is not training time). It evaluates once, at the
    end (and at step 0)."""
    eval_iters = max(1, len(data["val"][0]) // (args.batch * args.seq_len))
    every = steps
    train_args = [
        f"--dataset={prepared}",
        f"--out_dir={work / f'nanogpt-s{seed}-{steps}'}",
        "--device=cpu",
        "--compile=False",
        "--dtype=float32",
        f"--n_layer={args.n_layer}",
        f"--n_head={args.n_head}",
        f"--n_embd={args.d_model}",
        f"--block_size={args.seq_len}",
        f"--batch_size={args.batch}",
        "--gradient_accumulation_steps=1",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        f"--warmup_iters={max(1, steps // 10)}",
        f"--learning_rate={args.nanogpt_lr}",
        f"--min_lr={args.nanogpt_lr / 10}",
        f"--eval_interval={every}",
        f"--eval_iters={eval_iters}",
        "--log_interval=1",
        "--always_save_checkpoint=False",
        "--dropout=0.0",
        "--bias=False",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",  # each line as it is printed: the clock reads their arrival
    }
    t0 = time.time()
    proc = subprocess.Popen(
        nanogpt_command(seed, train_args),
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    curve, start, params, tail, last_iter = [], None, None, [], None
    for line in proc.stdout:
        now = time.time()
        tail = (tail + [line])[-20:]
        if m := re.match(r"number of parameters: ([\d.]+)M", line):
            params = float(m.group(1)) * 1e6
        if start is None and re.match(r"step 0: train loss", line):
            start = now  # the clock starts where llmctl's does: at the first training step
        if re.match(r"iter \d+: loss", line):
            last_iter = now
        if m := re.match(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", line):
            step = int(m.group(1))
            t = (last_iter or now) - (start or now)
            curve.append((step, step * args.batch * args.seq_len, t, float(m.group(2))))
    if proc.wait() != 0 or not curve:
        raise SystemExit("nanoGPT train.py failed:\n" + "".join(tail))
    return {"curve": curve, "params": params, "wall_s": time.time() - t0}


def seconds_per_step(fn, probe: int) -> float:
    """Time `probe` steps and 2 * `probe` steps: the difference is per-step time without start-up.
    Where it comes out under a quarter of the longer run's average step (timing noise: a busy
    machine, too few probe steps), that average is used instead."""
    a = fn(probe)["curve"][-1][2]
    b = fn(2 * probe)["curve"][-1][2]
    avg = max(1e-6, b / (2 * probe))
    per = (b - a) / probe
    return per if per >= avg / 4 else avg


def to_bpb(loss: float, data: dict) -> float:
    """Nats a token to bits a byte of the val text."""
    return loss / math.log(2) / data["bytes_per_token"]


def verdict(best: list[float], peer: list[float]) -> dict:
    """Compare the best llmctl variant's per-seed val bits/byte with nanoGPT's (same seed order).
    PASS when it is lower at every seed; also says whether the two min-max ranges are apart (every
    llmctl seed below every nanoGPT seed) and the mean difference against the wider range."""
    every = all(b < p for b, p in zip(best, peer, strict=True))
    spread = max(max(best) - min(best), max(peer) - min(peer))
    return {
        "pass": every,
        "every_seed": every,
        "ranges_apart": max(best) < min(peer),
        "mean_diff": statistics.mean(peer) - statistics.mean(best),
        "spread": spread,
    }


def equal_time(args, data: dict, work: Path) -> dict:
    """Each side times its steps once (--probe-steps and twice that, at the first seed, in
    WORK/probe), then trains that many steps at every seed; one evaluation a run, at its end: the
    same (full) validation pass on both sides, outside the clock."""
    seeds = [int(s) for s in args.seeds.split(",")]
    sides = {
        n: (lambda steps, seed, where, n=n: run_llmctl(n, seed, steps, args, data, where, eval_every=steps))
        for n in args.variants.split(",")
    }
    if args.nanogpt:
        check_seed_runner(Path(args.nanogpt), work / "runner_check")
        prepared = prepare_nanogpt(data, work)
        sides["nanogpt"] = lambda steps, seed, where: run_nanogpt(
            Path(args.nanogpt), seed, steps, args, data, where, prepared
        )
    rows = []
    for name, fn in sides.items():
        per = seconds_per_step(lambda steps, fn=fn: fn(steps, seeds[0], work / "probe"), args.probe_steps)
        steps = max(1, int(args.seconds / per))
        print(f"{name}: {per:.3f} s a step (probe) -> {steps} steps a seed", flush=True)
        runs = []
        for seed in seeds:
            r = fn(steps, seed, work)
            final = r["curve"][-1]
            runs.append(
                {
                    "seed": seed,
                    "tokens": final[1],
                    "train_s": final[2],
                    "val_loss": final[3],
                    "val_bpb": to_bpb(final[3], data),
                    "curve": r["curve"],
                }
            )
        bpb = [x["val_bpb"] for x in runs]
        rows.append(
            {
                "side": name,
                "params": r["params"],
                "steps": steps,
                "seconds_per_step": per,
                "tokens": runs[0]["tokens"],
                "train_s_mean": statistics.mean(x["train_s"] for x in runs),
                "val_loss_mean": statistics.mean(x["val_loss"] for x in runs),
                "val_bpb_mean": statistics.mean(bpb),
                "val_bpb_min": min(bpb),
                "val_bpb_max": max(bpb),
                "seeds": runs,
            }
        )
    print(
        f"\nequal wall-clock: {args.seconds:g} s of training a side, {args.threads} thread(s), seeds {seeds} "
        f"(each side's steps sized once, from a probe at seed {seeds[0]})"
    )
    print(
        "| side | params | steps | tokens | train s (mean) | val loss (mean, nats/token) | "
        "val bits/byte (mean) | min-max | per seed |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        per_seed = ", ".join(f"{x['val_bpb']:.4f}" for x in r["seeds"])
        print(
            f"| {r['side']} | {r['params'] or 0:,.0f} | {r['steps']} | {r['tokens']:,} | {r['train_s_mean']:.0f} | "
            f"{r['val_loss_mean']:.4f} | {r['val_bpb_mean']:.4f} | {r['val_bpb_min']:.4f}-{r['val_bpb_max']:.4f} | "
            f"{per_seed} |"
        )
    result = {
        "mode": "equal-time",
        "seconds": args.seconds,
        "threads": args.threads,
        "seeds": seeds,
        "bytes_per_token": data["bytes_per_token"],
        "rows": rows,
    }
    peer = next((r for r in rows if r["side"] == "nanogpt"), None)
    # llmctl's variants at nanoGPT's parameter count (it counts without its position embeddings)
    same = [r for r in rows if peer and r is not peer and abs(r["params"] - peer["params"]) <= 0.05 * peer["params"]]
    if peer is None:
        print("no nanoGPT side (--nanogpt): no verdict")
    elif not same:
        print(f"no llmctl variant within 5% of nanoGPT's {peer['params']:,.0f} parameters: no verdict")
    else:
        best = min(same, key=lambda r: r["val_bpb_mean"])
        v = verdict([x["val_bpb"] for x in best["seeds"]], [x["val_bpb"] for x in peer["seeds"]])
        result["verdict"] = {"best": best["side"], **v}
        print(
            f"best llmctl variant at nanoGPT's parameter count: {best['side']} ({best['val_bpb_mean']:.4f} bits/byte "
            f"mean against nanoGPT's {peer['val_bpb_mean']:.4f}); mean difference {v['mean_diff']:+.4f} "
            f"(widest min-max range {v['spread']:.4f}); ranges {'apart' if v['ranges_apart'] else 'overlap'}; "
            f"below nanoGPT at every seed: {'PASS' if v['pass'] else 'FAIL'}"
        )
    return result


# ----------------------------------------------------------------------------- plot


def plot(result: dict, out: Path, data: dict) -> None:
    """Val bits per byte against training seconds, every seed, one colour a side: equal-tokens draws
    each run's curve; equal-time each run's final evaluation (its only one, bar nanoGPT's at step 0,
    left out) against its training seconds, with the --seconds budget dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if result["mode"] == "equal-tokens":
        series = [(n, [r["curve"] for r in rs]) for n, rs in result["runs"].items()]
    else:
        series = [(r["side"], [x["curve"][-1:] for x in r["seeds"]]) for r in result["rows"]]
        ax.axvline(result["seconds"], color="grey", ls=":", lw=1)
    for i, (name, curves) in enumerate(series):
        for j, c in enumerate(curves):
            xs = [p[2] for p in c]
            ys = [p[3] / math.log(2) / data["bytes_per_token"] for p in c]
            label = f"{name} ({len(curves)} seed{'s' * (len(curves) > 1)})" if j == 0 else None
            ax.plot(xs, ys, "o-", ms=4 if len(c) > 1 else 7, color=colors[i % len(colors)], alpha=0.7, label=label)
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("val bits per byte")
    if result["mode"] == "equal-tokens":
        ax.set_title("TinyStories, equal tokens")
    else:
        ax.set_title(f"TinyStories, equal wall-clock ({result['seconds']:g} s a side, {result['threads']} thread(s))")
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["equal-tokens", "equal-time"])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="sequences a step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=100, help="equal-tokens: steps a run")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW peak lr (today's default; Muon's rest too)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="adamw,muon,recipe")
    ap.add_argument("--baseline", type=float, help="equal-tokens without adamw: its final val loss from a run before")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=600, help="equal-time: training seconds a side")
    ap.add_argument("--probe-steps", type=int, default=10, help="equal-time: steps timed to size each side's run")
    ap.add_argument("--nanogpt", help="equal-time: a karpathy/nanoGPT checkout to run as the peer")
    ap.add_argument("--nanogpt-lr", type=float, default=1e-3, help="nanoGPT's peak lr (its small-model config's)")
    ap.add_argument("--out", help="work dir (default: a temporary one)")
    ap.add_argument("--plot", help="write the val-bits-per-byte-vs-time plot here (PNG)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="recipe-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = prepare(Path(args.data), args.vocab, work)
    print(
        f"data: {len(data['train'][0]):,} train / {len(data['val'][0]):,} val tokens, vocab {data['vocab']}, "
        f"{data['bytes_per_token']:.3f} val bytes/token; model {args.n_layer} layers, d {args.d_model}; "
        f"{args.threads} thread(s); load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores"
    )
    result = equal_tokens(args, data, work) if args.mode == "equal-tokens" else equal_time(args, data, work)
    if args.plot:
        plot(result, Path(args.plot), data)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1) + "\n")
    print(f"total {time.time() - t0:.0f} s; load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
