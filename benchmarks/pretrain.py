"""Pretraining throughput on CPU: llmctl's loop vs transformers' LlamaForCausalLM in a plain torch loop.

Same shape (the 10m preset, vocab 8192, ~10M params), same batch (16 x 256 tokens per step, fp32),
same optimizer (AdamW, no decay on norms/embeddings, grad clip 1.0), same run, alternated in
rounds so a noisy neighbour hits both sides alike. MFU is against the machine's measured fp32
matmul rate. llmctl runs its real training loop (data packing, logging, metrics.jsonl);
`doc_mask` off matches the peer's plain causal attention, and the masked variant is shown too.

    .venv/bin/python benchmarks/pretrain.py [--steps 6] [--rounds 2] [--threads 2]
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

import numpy as np
import torch

from llmctl.model.transformer import Transformer, preset_config
from llmctl.train.loop import TrainConfig, train
from llmctl.train.pretrain import PackedBatches, lm_loss

VOCAB, SEQ, BATCH = 8192, 256, 16


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flat = rng.integers(3, VOCAB, size=SEQ * BATCH * 64 + 1, dtype=np.int32)
    return flat, np.array([0, len(flat)])


def run_llmctl(steps: int, doc_mask: bool) -> list[float]:
    torch.manual_seed(0)
    cfg = preset_config("10m", VOCAB)
    m = Transformer(cfg)
    flat, offs = data()
    flat[::97] = 2  # an EOS now and then, so the masked variant has documents to separate
    batches = PackedBatches(flat, offs, SEQ, BATCH, seed=0, eos_id=2, doc_mask=doc_mask)
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
    return [r["tokens_per_s"] for r in recs[2:]]


def run_hf(steps: int) -> list[float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    c = preset_config("10m", VOCAB)
    hc = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        max_position_embeddings=SEQ,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    m = LlamaForCausalLM(hc).train()
    tc = TrainConfig(steps=steps, batch_size=BATCH, micro_batch=BATCH)
    opt = build_optimizer_hf(m, tc)
    flat, _ = data()
    out = []
    for s in range(steps):
        t = time.perf_counter()
        w = torch.from_numpy(
            np.stack([flat[(s * BATCH + j) * SEQ : (s * BATCH + j) * SEQ + SEQ + 1] for j in range(BATCH)]).astype(
                np.int64
            )
        )
        logits = m(input_ids=w[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(BATCH * SEQ / (time.perf_counter() - t))
    return out[2:]


def build_optimizer_hf(m: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in m.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no = [p for n, p in m.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
        eps=1e-8,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak = matmul_peak()
    m = Transformer(preset_config("10m", VOCAB))
    fpt = m.flops_per_token(SEQ)
    print(
        f"10m preset: {m.num_params():,} params, {fpt / 1e6:.1f} MFLOPs/token; batch {BATCH}x{SEQ}; "
        f"{a.threads} threads; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    res: dict[str, list[float]] = {"llmctl": [], "llmctl doc_mask": [], "transformers": []}
    for r in range(a.rounds):
        res["llmctl"] += run_llmctl(a.steps, doc_mask=False)
        res["transformers"] += run_hf(a.steps)
        res["llmctl doc_mask"] += run_llmctl(a.steps, doc_mask=True)
    base = statistics.median(res["transformers"])
    for name, v in res.items():
        med = statistics.median(v)
        print(
            f"{name:>16}: {med:8,.0f} tok/s (median of {len(v)} steps)  MFU {100 * fpt * med / peak:5.1f}%  "
            f"{med / base:.2f}x transformers"
        )


if __name__ == "__main__":
    main()
