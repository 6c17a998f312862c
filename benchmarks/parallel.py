"""Training throughput of llmctl's parallel layouts on CPU: 1 process, DDP 2, FSDP2 2 and TP 2.

A correctness-of-plumbing figure, not a speed claim: on CPU, gloo's collectives and 2 processes
sharing 2 cores cost more than they save (tensor parallelism pays an all-gather and a
reduce-scatter per block, forward and backward, for matmuls a quarter the size). What it shows:
every layout runs the real training loop (llmctl.train.loop.train, PackedBatches over the dp
ranks, loss_parallel for TP) on the same global batch, gives the same losses, and what each costs.
Floor (issue 16): TP=2's step time within 3x of DDP=2's.

Shape: the 10m preset (6 layers, d_model 320, d_ff 864, vocab 8192) with 4 attention heads instead
of its 5, which do not split over 2 ranks; the same shape in every layout. Batch: 8 x 256 tokens
per step, micro-batch 4 (1 process and TP=2: 2 accumulation steps; DDP/FSDP2 over 2: 1 each), fp32.
Threads: the 1-process run gets 2 intra-op threads, each of 2 processes 1, so every layout has the
same 2 cores. The layouts alternate in rounds so a noisy neighbour hits them alike.

    .venv/bin/python benchmarks/parallel.py [--steps 6] [--rounds 2]

On GPUs (`--gpu`, or scripts/gpu_throughput.sh): the 124m preset (vocab 50304, 1024 tokens per
sequence, 32 sequences per step, micro-batch 16), bf16 autocast, torch.compile; 1 GPU, and with
2 or more GPUs DDP 2, FSDP2 2 and TP 2; tokens/s, MFU (the loop's, over every GPU of the layout)
and peak memory (the most any rank allocated). Issue 16's floor there: >= 45% MFU on one H100/H200.
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep them off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

CPU = dict(preset="10m", vocab=8192, seq=256, batch=8, micro=4, heads=4, warm=2)  # warm: steps left out
GPU = dict(
    preset="124m", vocab=50304, seq=1024, batch=32, micro=16, heads=None, warm=10
)  # (compile, first collectives)
LAYOUTS = {  # name: (processes, extra worker flags)
    "1 process": (1, []),
    "DDP 2": (2, []),
    "FSDP2 2": (2, ["--fsdp"]),
    "TP 2": (2, ["--tp", "2"]),
}


def worker(steps: int, fsdp: bool, tp: int, out: str, gpu: bool) -> None:
    """One rank of one layout (under torchrun, or alone): the real loop on random tokens."""
    import numpy as np
    import torch

    from llmctl.model.transformer import Transformer, preset_config
    from llmctl.train import distributed as D
    from llmctl.train.loop import TrainConfig, train
    from llmctl.train.pretrain import PackedBatches, lm_loss

    s = GPU if gpu else CPU
    d = D.init("cuda" if gpu else "cpu", tp)
    torch.manual_seed(0)
    cfg = preset_config(s["preset"], s["vocab"], n_head=s["heads"], max_seq_len=s["seq"])
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    flat = rng.integers(3, s["vocab"], size=s["seq"] * s["batch"] * (steps + 1) + 1, dtype=np.int32)
    batches = PackedBatches(
        flat,
        np.array([0, len(flat)]),
        s["seq"],
        s["micro"],
        seed=0,
        eos_id=2,
        rank=d.dp_rank,
        world=d.dp,
        doc_mask=False,
    )
    tc = TrainConfig(
        steps=steps,
        batch_size=s["batch"],
        micro_batch=s["micro"],
        warmup_steps=2,
        eval_every=0,
        ckpt_every=0,
        log_every=10**9,
        device=d.device.type,
        fsdp=fsdp,
        tp=tp,
        compile=gpu,
        dtype="bf16" if gpu else "fp32",
    )
    try:
        train(
            model, cfg, lm_loss, batches, tc, out, loss_parallel=True, flops_per_token=model.flops_per_token(s["seq"])
        )
        peak = torch.tensor([torch.cuda.max_memory_allocated() if gpu else 0], dtype=torch.float64, device=d.device)
        if d.world > 1:
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        if d.master:
            Path(out, "peak_memory.json").write_text(json.dumps({"bytes": peak.item()}))
    finally:
        D.shutdown()


def run_layout(name: str, steps: int, gpu: bool, dry: bool = False) -> dict:
    """{tokens_per_s: per step after the warm-up, mfu: likewise, loss: last, peak_gib} of one layout."""
    nproc, flags = LAYOUTS[name]
    with tempfile.TemporaryDirectory() as out:
        me = [str(Path(__file__).resolve()), "--worker", "--steps", str(steps), "--out", out, *flags]
        me += (["--gpu"] if gpu else []) + (["--dry-run"] if dry else [])
        if nproc == 1:
            cmd, threads = [sys.executable, *me], "2"
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *me]
            threads = "1"
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads})
        if r.returncode:
            sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
        recs = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl")]
        peak = json.loads(Path(out, "peak_memory.json").read_text())["bytes"]
    warm = (GPU if gpu else CPU)["warm"]
    return {
        "tokens_per_s": [rec["tokens_per_s"] for rec in recs[warm:]],
        "loss": recs[-1]["loss"],
        "mfu": [rec["mfu"] for rec in recs[warm:] if rec.get("mfu") is not None],
        "peak_gib": peak / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="Tokens/s of llmctl's parallel layouts (CPU gloo, or --gpu).")
    ap.add_argument("--steps", type=int, default=None, help="Steps per run (default 6 on CPU, 30 on GPUs).")
    ap.add_argument("--rounds", type=int, default=None, help="Rounds of alternation (default 2 on CPU, 1 on GPUs).")
    ap.add_argument("--gpu", action="store_true", help="The 124m preset in bf16 with compile on the GPUs here.")
    ap.add_argument("--dry-run", action="store_true", help="The plumbing only: tiny shape, 1 process, 3 steps, CPU.")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.dry_run:
        CPU.update(preset="tiny", vocab=512, seq=64, batch=4, micro=2, heads=None, warm=1)
    if a.worker:
        return worker(a.steps, a.fsdp, a.tp, a.out, a.gpu)
    steps = a.steps or (3 if a.dry_run else 30 if a.gpu else 6)
    rounds = a.rounds or (1 if a.gpu or a.dry_run else 2)
    layouts = list(LAYOUTS)
    if a.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu: no CUDA device here")
        if torch.cuda.device_count() < 2:
            layouts = ["1 process"]  # TP 2 / FSDP2 2 need 2 GPUs
    if a.dry_run:
        layouts = ["1 process"]
    s = GPU if a.gpu else CPU
    heads = f" with {s['heads']} heads" if s["heads"] else ""
    print(
        f"{s['preset']} preset{heads}, vocab {s['vocab']}; "
        f"{s['batch']} x {s['seq']} tokens/step, micro-batch {s['micro']}, "
        f"{'bf16 + compile, NCCL' if a.gpu else 'fp32, CPU gloo, 2 cores for every layout'}; "
        f"{steps} steps x {rounds} round(s), first {s['warm']} of each left out"
    )
    res: dict[str, dict] = {name: {"tokens_per_s": [], "mfu": [], "loss": None, "peak_gib": 0.0} for name in layouts}
    for _ in range(rounds):
        for name in layouts:
            r = run_layout(name, steps, a.gpu, a.dry_run)
            res[name]["tokens_per_s"] += r["tokens_per_s"]
            res[name]["mfu"] += r["mfu"]
            res[name]["loss"], res[name]["peak_gib"] = r["loss"], max(res[name]["peak_gib"], r["peak_gib"])
    base = statistics.median(res[layouts[-1] if "DDP 2" not in res else "DDP 2"]["tokens_per_s"])
    for name, r in res.items():
        med = statistics.median(r["tokens_per_s"])
        line = (
            f"{name:>10}: {med:10,.0f} tok/s  {1000 * s['batch'] * s['seq'] / med:7.0f} ms/step  "
            f"step time {base / med:4.2f}x {'DDP 2' if 'DDP 2' in res else layouts[-1]}'s  last loss {r['loss']:.6f}"
        )
        if r["mfu"]:
            line += f"  MFU {100 * statistics.median(r['mfu']):.1f}%"
        if a.gpu:
            line += f"  peak memory {r['peak_gib']:.1f} GiB/GPU"
        print(line)
    if "TP 2" in res and "DDP 2" in res:
        ratio = base / statistics.median(res["TP 2"]["tokens_per_s"])
        print(f"floor: TP 2 step time within 3x of DDP 2's: {ratio:.2f}x -> {'ok' if ratio <= 3 else 'MISSED'}")
    losses = [r["loss"] for r in res.values()]
    print(f"same losses in every layout: spread {max(losses) - min(losses):.2e} (float summation order only)")


if __name__ == "__main__":
    main()
