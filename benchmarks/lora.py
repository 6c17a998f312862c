"""LoRA benchmark: trainable parameters, training memory and step time, full fine-tuning vs LoRA.

Each mode trains the same llmctl Transformer (a preset shape, random weights, random tokens) for a
few AdamW steps with llmctl's optimizer grouping, in its own subprocess so that peak memory is that
mode's alone: torch.cuda.max_memory_allocated on a GPU, else the process's peak RSS (VmHWM) and its
growth over the RSS before the model was built (`train_growth`: weights + gradients + optimizer state
+ activations; the torch runtime itself left out). The children run with glibc's
MALLOC_MMAP_THRESHOLD_=65536 (unless set): every tensor of 64 kB or more is its own mapping, returned
to the system when freed, so the peak RSS follows the live tensors instead of the heap's high-water
mark (with glibc's default, freed activations stay in the heap and LoRA's peak read higher than
full fine-tuning's at 1,024 tokens a step). The weights + gradients +
AdamW moments column is computed (4 bytes each): what LoRA saves whatever the allocator does.
`--shape smollm2-135m` is the shape of that open model as `llmctl sft --from` imports it (30 layers,
d 576, 9 heads / 3 kv heads, d_ff 1536, vocab 49152, tied embeddings).

    python benchmarks/lora.py                                   # 124m shape, seq 512, batch 8, r 16
    python benchmarks/lora.py --shape smollm2-135m --seq 256 --batch 4 --steps 3
    python benchmarks/lora.py --preset tiny --seq 64 --batch 2 --steps 2      # a quick check
    python benchmarks/lora.py --preset 350m --device cuda --dtype bf16

Prints one JSON line per mode and a summary table (docs/lora.md records the figures).
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep it off the import path
sys.path[:] = [p for p in sys.path if p not in ("", __import__("os").path.dirname(__file__))]

import argparse
import json
import os
import subprocess
import time

# shapes of open models, as llmctl.model.hf_import maps their config.json
SHAPES = {
    "smollm2-135m": dict(
        vocab_size=49152,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        d_model=576,
        d_ff=1536,
        tie_embeddings=True,
        rope_base=100000.0,
        norm_eps=1e-5,
    ),
}


def _kb(field: str) -> int:
    """A /proc/self/status field in kB (Linux)."""
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(field))


def run_mode(args: argparse.Namespace) -> dict:
    import torch

    from llmctl.model.lora import LoraConfig, apply_lora, trainable_summary
    from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy, preset_config
    from llmctl.train.loop import TrainConfig, build_optimizer

    device = torch.device(args.device)
    torch.manual_seed(0)
    rss0 = _kb("VmRSS:") * 1024
    if args.shape:
        cfg = ModelConfig(**SHAPES[args.shape], max_seq_len=max(args.seq, 2048))
    else:
        cfg = preset_config(args.preset, args.vocab, max_seq_len=max(args.seq, 64))
    model = Transformer(cfg).to(device)
    if args.mode == "lora":
        apply_lora(model, LoraConfig(r=args.r, targets=args.targets))
    n_train, n_all = trainable_summary(model)
    optim = build_optimizer(model, TrainConfig(lr=1e-4, warmup_steps=0, steps=args.steps))
    use_bf16 = args.dtype == "bf16"
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _kb("VmHWM:") * 1024
    after_first = times[1:] or times
    bytes_per = 4  # fp32 master weights (autocast computes in bf16 but keeps them)
    return {
        "mode": args.mode,
        "shape": args.shape or args.preset,
        "params": n_all,
        "trainable": n_train,
        "peak_bytes": peak,
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "VmHWM",
        "train_growth_bytes": peak - (0 if device.type == "cuda" else rss0),
        "step_s": sum(after_first) / len(after_first),
        # fp32 weights + gradients + AdamW's two moments: what LoRA saves, independent of the allocator
        "state_bytes": bytes_per * (n_all + 3 * n_train),
        "loss": loss.item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="an open model's shape instead of a preset")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # the per-mode subprocess
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    rows = []
    for mode in ("full", "lora"):
        r = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode],
            capture_output=True,
            text=True,
            check=False,
            env={"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ},
        )
        if r.returncode:
            sys.exit(f"{mode} run failed:\n{r.stderr}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    print(
        f"\n{'mode':6} {'trainable':>14} {'of params':>14} {'weights+grads+adam':>19} {'peak':>12} {'growth':>12}"
        f" {'s/step':>8}"
        f"  (peak: {rows[0]['peak_kind']})"
    )
    for r in rows:
        print(
            f"{r['mode']:6} {r['trainable']:>14,} {r['params']:>14,} {r['state_bytes'] / 2**20:>15,.0f} MiB"
            f" {r['peak_bytes'] / 2**20:>8,.0f} MiB"
            f" {r['train_growth_bytes'] / 2**20:>8,.0f} MiB"
            f" {r['step_s']:>8.3f}"
        )


if __name__ == "__main__":
    main()
