"""One GPU, a few minutes: is llmctl as fast and as big as `llmctl plan` says?

Prints one table and exits 1 if any check fails:
  - 124m training, bf16 autocast + torch.compile: tokens/s and MFU (FLOPs per token from llmctl.plan);
  - the same under FSDP2 on a one-rank process group (the sharding code path, no sharding gain);
  - generation tokens/s of llmctl's engine (generate_batch, KV cache);
  - plan's predicted per-rank peak vs the measured peak (torch.cuda.max_memory_allocated of the
    second eager step), within --mem-tolerance.

    .venv/bin/python scripts/gpu_check.py                # on a GPU machine
    .venv/bin/python scripts/gpu_check.py --dry-run      # tiny model on CPU: the same code, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from llmctl.model.generate import generate_batch
from llmctl.model.transformer import Transformer, cross_entropy, preset_config
from llmctl.plan import Layout, load_gpus, plan
from llmctl.train.loop import TrainConfig, build_optimizer


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower().replace(" ", "")
    table = load_gpus()
    hits = [g for key, g in table.items() if key.replace("-", "") in name]
    return max(hits, key=lambda g: len(g.name)).peak_flops if hits else None


def train_rate(model, device, dtype, batch, seq_len, steps, vocab) -> tuple[float, float]:
    """(tokens/s over `steps` timed steps after 3 warm-up steps, last loss)."""
    opt = build_optimizer(model, TrainConfig())
    x = torch.randint(0, vocab, (batch, seq_len), device=device)
    loss = torch.zeros(())
    for i in range(3 + steps):
        if i == 3:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = cross_entropy(model(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return batch * seq_len * steps / (time.perf_counter() - t0), float(loss.detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak(model, device, dtype, batch, seq_len, vocab) -> float:
    """Peak bytes of the second of two eager training steps (CUDA allocator; MemTracker on CPU)."""
    opt = build_optimizer(model, TrainConfig())
    x = torch.randint(0, vocab, (batch, seq_len), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = cross_entropy(model(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device)
    from torch.distributed._tools.mem_tracker import MemTracker  # private torch tool: the CPU stand-in only

    tracker = MemTracker()
    tracker.track_external(model, *getattr(opt, "optimizers", [opt]))
    with tracker:
        step()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    return peak["Total"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny model, CPU, fp32, no compile")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--peak-tflops", type=float, default=None, help="this GPU's dense bf16 peak, if not in the table")
    ap.add_argument("--mem-tolerance", type=float, default=0.15)
    a = ap.parse_args(argv)
    if a.dry_run:
        device, dtype, compile_, preset, vocab = torch.device("cpu"), torch.float32, False, "tiny", 512
        a.steps, a.batch, a.seq_len = 2, 2, 64
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run for the CPU plumbing check)", file=sys.stderr)
            return 1
        device, dtype, compile_, preset, vocab = torch.device("cuda"), torch.bfloat16, True, "124m", 50304
    torch.manual_seed(0)
    cfg = preset_config(preset, vocab)
    cfg.max_seq_len = max(cfg.max_seq_len, a.seq_len)
    dname = "fp32" if dtype == torch.float32 else "bf16"
    p = plan(cfg, Layout(), a.seq_len, a.batch, a.batch, dname)
    peak = peak_flops(device, a.peak_tflops)
    rows: list[tuple[str, str, bool]] = []

    def check(name, fn):
        try:
            value, ok = fn()
        except Exception as e:  # a failing check is a row, not a crash: the table still prints
            value, ok = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}", False
        rows.append((name, value, ok))

    def rate_row(tps: float, loss: float) -> tuple[str, bool]:
        mfu = f", MFU {tps * p.flops_per_token / peak:.1%}" if peak else ""
        return f"{tps:,.0f} tokens/s{mfu}", math.isfinite(loss)

    def single():
        model = Transformer(cfg).to(device)
        run = torch.compile(model) if compile_ else model
        return rate_row(*train_rate(run, device, dtype, a.batch, a.seq_len, a.steps, vocab))

    def fsdp():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29571")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
        try:
            model = Transformer(cfg).to(device)
            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
            run = torch.compile(model) if compile_ else model
            return rate_row(*train_rate(run, device, dtype, a.batch, a.seq_len, a.steps, vocab))
        finally:
            dist.destroy_process_group()

    def generation():
        model = Transformer(cfg).to(device).eval()
        prompts = [[1 + i] * 16 for i in range(8)]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = generate_batch(model, prompts, max_new_tokens=16 if a.dry_run else 256, temperature=1.0)
        return f"{out.tokens_per_s:,.0f} tokens/s (batch 8)", out.new_tokens > 0

    def memory():
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = Transformer(cfg).to(device)
        got = measured_peak(model, device, dtype, a.batch, a.seq_len, vocab)
        want = p.memory.peak
        ratio = want / got
        return f"plan {want / 2**30:.3f} GiB / measured {got / 2**30:.3f} GiB = {ratio:.3f}", abs(
            ratio - 1
        ) <= a.mem_tolerance

    check(f"{preset} train {dname}{' + compile' if compile_ else ''}", single)
    check(f"{preset} train FSDP2 (1 rank)", fsdp)
    check(f"{preset} generate", generation)
    check(f"{preset} memory: plan vs measured peak", memory)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    width = max(len(r[0]) for r in rows)
    print(f"gpu_check on {where}: batch {a.batch} x {a.seq_len}, {a.steps} timed steps")
    for name, value, ok in rows:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<{width}}  {value}")
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
