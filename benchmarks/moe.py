"""Mixture-of-Experts on CPU: does 8-expert top-2 beat dense at equal active parameters, and how fast is it?

    .venv/bin/python benchmarks/moe.py [--steps 200] [--speed-steps 4] [--rounds 2] [--threads 1]

One thread by default: on the shared 2-core machine this was measured on (load 12-15), two
threads ran these small matmuls 3-5x slower than one (both sides alike).

1. Quality: the same TinyStories tokens (../shared/data/tinystories, a 2048-token BPE trained
   here, every 10th story held out), the same steps, batch, schedule and seed; a dense model
   (3 layers, d_model 96, SwiGLU width 256) and an MoE one whose experts are half as wide
   (8 x 128, top-2: the same active parameters, plus an 8 x 96 router per layer). Prints both
   validation curves, their final values and the tokens/s ratio (floor: MoE >= 0.6x dense).
2. Speed: a training step of the moe-10m shape (6 layers, d_model 320, 8 experts x 432 top-2,
   vocab 8192, batch 8 x 256, fp32, AdamW, clip 1.0) in llmctl's real loop against transformers'
   MixtralForCausalLM of the same shape (its default grouped_mm experts, router logits on for its
   load-balancing loss) in a plain torch loop, alternated in rounds (floor: llmctl >= 1.0x).
   llmctl's per-expert loop (`moe_impl=loop`) is shown too.
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep them off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmctl.model.transformer import ModelConfig, Transformer, preset_config
from llmctl.train.loop import TrainConfig, train
from llmctl.train.pretrain import PackedBatches, PretrainConfig, lm_loss, make_evaluate

STORIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "tinystories_valid_head.txt"
SHAPE = dict(n_layer=3, n_head=4, d_model=96, max_seq_len=128)
VOCAB, SEQ, BATCH = 8192, 256, 8


def tinystories_tokens(vocab: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], int]:
    from llmctl.tokenizer.spm import Tokenizer

    docs = [d.strip() for d in STORIES.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    tok = Tokenizer.train(docs[:2000], vocab)
    split: dict[str, list[list[int]]] = {"train": [], "val": []}
    for i, d in enumerate(docs):
        split["val" if i % 10 == 0 else "train"].append(tok.encode(d) + [tok.eos_id])

    def pack(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([np.array(r, np.int32) for r in rows]), np.cumsum([0] + [len(r) for r in rows])

    return pack(split["train"]), pack(split["val"]), tok.eos_id


def quality_run(cfg: ModelConfig, data, steps: int, eval_every: int) -> tuple[list[tuple[int, float]], float]:
    (flat, offs), (vflat, voffs), eos = data
    pc = PretrainConfig(seq_len=128, batch_tokens=16 * 128, val_tokens=128 * 48)
    pc.train = TrainConfig(
        steps=steps,
        batch_size=16,
        micro_batch=16,
        lr=3e-3,
        warmup_steps=20,
        eval_every=eval_every,
        ckpt_every=0,
        log_every=10**9,
        device="cpu",
        seed=0,
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    batches = PackedBatches(flat, offs, 128, 16, seed=0, eos_id=eos)
    with tempfile.TemporaryDirectory() as d:
        train(model, cfg, lm_loss, batches, pc.train, d, evaluate=make_evaluate(vflat, voffs, pc, eos))
        recs = [json.loads(ln) for ln in open(f"{d}/metrics.jsonl")]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    tps = statistics.median(r["tokens_per_s"] for r in recs if "tokens_per_s" in r)
    return val, tps


def run_llmctl(steps: int, impl: str) -> list[float]:
    torch.manual_seed(0)
    cfg = preset_config("moe-10m", VOCAB, moe_impl=impl)
    m = Transformer(cfg)
    flat = np.random.default_rng(0).integers(3, VOCAB, size=SEQ * BATCH * 64 + 1, dtype=np.int32)
    batches = PackedBatches(flat, np.array([0, len(flat)]), SEQ, BATCH, seed=0, eos_id=2, doc_mask=False)
    tc = TrainConfig(
        steps=steps,
        batch_size=BATCH,
        micro_batch=BATCH,
        warmup_steps=2,
        eval_every=0,
        ckpt_every=0,
        log_every=10**9,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as d:
        train(m, cfg, lm_loss, batches, tc, d)
        recs = [json.loads(ln) for ln in open(f"{d}/metrics.jsonl")]
    return [r["tokens_per_s"] for r in recs[1:]]


def run_hf(steps: int) -> list[float]:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    c = preset_config("moe-10m", VOCAB)
    hc = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=c.d_model,
        intermediate_size=c.moe_d_ff,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        head_dim=c.head_dim,
        max_position_embeddings=SEQ,
        num_local_experts=c.n_experts,
        num_experts_per_tok=c.moe_top_k,
        tie_word_embeddings=True,
        sliding_window=None,
        output_router_logits=True,
        router_aux_loss_coef=c.moe_lb_coef,
        attn_implementation="sdpa",
    )
    m = MixtralForCausalLM(hc).train()
    tc = TrainConfig(steps=steps, batch_size=BATCH, micro_batch=BATCH)
    decay = [p for n, p in m.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in m.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
        eps=1e-8,
    )
    flat = np.random.default_rng(0).integers(3, VOCAB, size=SEQ * BATCH * 64 + 1, dtype=np.int32)
    out = []
    for s in range(steps):
        t = time.perf_counter()
        w = torch.from_numpy(
            np.stack([flat[(s * BATCH + j) * SEQ : (s * BATCH + j) * SEQ + SEQ + 1] for j in range(BATCH)]).astype(
                np.int64
            )
        )
        o = m(input_ids=w[:, :-1])
        loss = torch.nn.functional.cross_entropy(o.logits.flatten(0, 1).float(), w[:, 1:].flatten())
        (loss + hc.router_aux_loss_coef * o.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(BATCH * SEQ / (time.perf_counter() - t))
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200, help="quality: optimizer steps of 16 x 128 tokens")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--speed-steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-quality", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    if not a.skip_quality:
        data = tinystories_tokens(2048)
        print(
            f"TinyStories: {len(data[0][0]):,} train tokens, {len(data[1][0]):,} val tokens (2048-token BPE); "
            f"{a.steps} steps x 2,048 tokens"
        )
        dense_cfg = ModelConfig(vocab_size=2048, d_ff=256, **SHAPE)
        moe_cfg = ModelConfig(vocab_size=2048, d_ff=256, n_experts=8, moe_top_k=2, moe_d_ff=128, **SHAPE)
        res = {}
        for name, cfg in (("dense", dense_cfg), ("moe 8x top-2", moe_cfg)):
            m = Transformer(cfg)
            act = m.flops_per_token(128) / 6
            val, tps = quality_run(cfg, data, a.steps, a.eval_every)
            res[name] = (val, tps)
            print(
                f"{name:>13}: {m.num_params():>9,} params, ~{act / 1e6:.2f}M active (FLOPs/6 per token); "
                f"val loss {' '.join(f'{s}:{v:.3f}' for s, v in val)}; {tps:,.0f} tok/s"
            )
        (dv, dt), (mv, mt) = res["dense"], res["moe 8x top-2"]
        print(
            f"final val loss: dense {dv[-1][1]:.4f}, moe {mv[-1][1]:.4f} (moe - dense {mv[-1][1] - dv[-1][1]:+.4f}); "
            f"moe tokens/s {mt / dt:.2f}x dense (floor 0.6x)"
        )

    if a.rounds < 1:
        return
    c = preset_config("moe-10m", VOCAB)
    print(
        f"speed: moe-10m shape ({Transformer(c).num_params():,} params), batch {BATCH}x{SEQ}, fp32, {a.threads} threads"
    )
    speed: dict[str, list[float]] = {"llmctl": [], "llmctl moe_impl=loop": [], "transformers Mixtral": []}
    for _ in range(a.rounds):
        speed["llmctl"] += run_llmctl(a.speed_steps, "auto")
        speed["transformers Mixtral"] += run_hf(a.speed_steps)
        speed["llmctl moe_impl=loop"] += run_llmctl(a.speed_steps, "loop")
    base = statistics.median(speed["transformers Mixtral"])
    for name, v in speed.items():
        med = statistics.median(v)
        print(f"{name:>22}: {med:8,.0f} tok/s (median of {len(v)} steps)  {med / base:.2f}x transformers")


if __name__ == "__main__":
    main()
