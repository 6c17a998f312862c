"""`llmctl dpo`: direct preference optimization against a frozen reference, on the shared loop.

Batch builder: a micro-batch of B pairs is one forward of 2B right-padded rows (chosen 0..B-1,
rejected B..2B-1, as TRL concatenates them); labels are the next token where it belongs to the
response (its <|end|> included), so prompt and padding add nothing to a sequence's log-prob.

Reference: the starting checkpoint, or `--ref CKPT`; frozen (eval mode, no grad). Every step
runs it forward on the same batch, which costs ~1/3 of a step (forward only vs forward+backward).
With `cache_ref` its log-probs are computed once for all train and held-out pairs before
training (one forward per pair, the reference then freed), so a run of E epochs saves ~E-1
reference passes and the reference's memory: the figure for a policy twice the size of a GPU's
spare memory. The cache is deterministic and not stored: a resume recomputes it.

Loss and metrics: `llmctl.train.dpo_loss` (its LOSS_TYPES; TRL's metric names). Step
metrics go to metrics.jsonl under those names (`rewards/accuracies`, ...); held-out metrics are
`val_rewards/accuracies` etc.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmctl.data.chat_data import Encoded, ItemBatches, read_rows
from llmctl.errors import UsageError
from llmctl.model.lora import BaseReference
from llmctl.train import distributed as D
from llmctl.train.dpo_loss import LOSS_TYPES, dpo_loss, dpo_metrics, response_logps
from llmctl.train.finetune import IGNORE, collate_pairs, encode_prefs, load_start, run_training, use_lora
from llmctl.train.loop import TrainConfig
from llmctl.train.run_dir import training_stage

METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _dpo_train() -> TrainConfig:
    return TrainConfig(
        steps=200,
        batch_size=8,
        micro_batch=4,
        lr=1e-5,
        warmup_steps=10,
        eval_every=50,
        ckpt_every=100,
        weight_decay=0.0,
    )


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # a name in llmctl.train.dpo_loss.LOSS_TYPES
    label_smoothing: float = 0.0  # cDPO (sigmoid) / robust DPO noise rate, in [0, 0.5)
    ref: str | None = None  # reference checkpoint; None = the starting checkpoint
    cache_ref: bool = False  # compute reference log-probs once before training
    max_len: int = 512
    val_fraction: float = 0.05
    train: TrainConfig = field(default_factory=_dpo_train)

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise UsageError(f"unknown loss_type {self.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
        if not 0 <= self.label_smoothing < 0.5:
            raise UsageError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.beta <= 0:
            raise UsageError(f"beta must be positive, got {self.beta}")


def collate_dpo(pairs: list[tuple[Encoded, Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    b = collate_pairs(pairs, pad_id)
    ids, mask = b["input_ids"], b["response_mask"]
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
    return {"input_ids": ids, "labels": labels}


def make_dpo_loss(cfg: DPOConfig, ref: torch.nn.Module | None):
    """loss_fn(model, batch) for the loop; uses batch['ref_logps'] when cached, else runs `ref`."""
    average = LOSS_TYPES[cfg.loss_type].average

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logps = response_logps(model, batch["input_ids"], batch["labels"], average=average)
        if "ref_logps" in batch:
            ref_logps = batch["ref_logps"]
        else:
            assert ref is not None
            with torch.no_grad():
                ref_logps = response_logps(ref, batch["input_ids"], batch["labels"], average=average)
        n = logps.shape[0] // 2
        losses, rc, rr = dpo_loss(
            logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], cfg.beta, cfg.loss_type, cfg.label_smoothing
        )
        return losses.mean(), dpo_metrics(rc, rr, logps[:n], logps[n:])

    return loss_fn


@torch.no_grad()
def reference_logps(
    ref: torch.nn.Module,
    pairs: list,
    micro_batch: int,
    pad_id: int,
    average: bool,
    device: torch.device,
    autocast=nullcontext,
) -> torch.Tensor:
    """(N, 2) reference log-probs [chosen, rejected] for every pair."""
    out = []
    for s in range(0, len(pairs), micro_batch):
        b = collate_dpo(pairs[s : s + micro_batch], pad_id)
        with autocast():
            lp = response_logps(ref, b["input_ids"].to(device), b["labels"].to(device), average=average)
        n = lp.shape[0] // 2
        out.append(torch.stack([lp[:n], lp[n:]], dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


def make_dpo_evaluate(pairs: list, cfg: DPOConfig, pad_id: int, loss_fn, ref_cache: torch.Tensor | None):
    """Held-out loss and TRL metrics over all val pairs (split over ranks)."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        d = D.info()
        idx = list(range(d.dp_rank, len(pairs), d.dp))
        tot = torch.zeros(2 + len(METRIC_NAMES), dtype=torch.float64)
        mb = cfg.train.micro_batch
        for s in range(0, len(idx), mb):
            part = idx[s : s + mb]
            b = collate_dpo([pairs[i] for i in part], pad_id)
            if ref_cache is not None:
                b["ref_logps"] = ref_cache[part].T.reshape(-1)
            b = {k: v.to(d.device) for k, v in b.items()}
            loss, m = loss_fn(model, b)
            k = len(part)
            tot += torch.tensor(
                [loss.item() * k, k] + [float(m[name]) * k for name in METRIC_NAMES], dtype=torch.float64
            )
        D.all_reduce_sum(tot)
        n = max(tot[1].item(), 1.0)
        return {"val_loss": tot[0].item() / n, **{f"val_{k}": v / n for k, v in zip(METRIC_NAMES, tot[2:].tolist())}}

    return evaluate


@training_stage("run_dir")
def run_dpo(
    data: str | Path,
    from_ckpt: str | Path,
    run_dir: str | Path,
    cfg: DPOConfig,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """DPO from a (usually SFT) checkpoint on preference pairs; returns the loop summary."""
    d = D.init(cfg.train.device, cfg.train.tp)
    model, mc, tok, ck_lineage = load_start(from_ckpt, cfg.max_len)
    lora = use_lora(model, cfg.train, ck_lineage, "dpo")
    ref_src = cfg.ref or from_ckpt
    if lora and not cfg.ref:  # the policy with its adapters off is the starting checkpoint: no second copy
        model.to(d.device)
        ref, ref_lineage = BaseReference(model), ck_lineage
    else:
        ref, ref_mc, _, ref_lineage = load_start(ref_src)
        if ref_mc.vocab_size != mc.vocab_size:
            raise UsageError(f"reference {ref_src} has vocab_size {ref_mc.vocab_size}, policy {mc.vocab_size}")
        ref = ref.to(d.device).eval().requires_grad_(False)
    rows, data_lineage = read_rows(data)
    tr, val, counts = encode_prefs(tok, rows, cfg.max_len, cfg.val_fraction, cfg.train.seed, str(data))
    use_bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and d.device.type == "cuda")
    autocast = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    tr_cache = val_cache = None
    if cfg.cache_ref:
        avg = LOSS_TYPES[cfg.loss_type].average
        tr_cache = reference_logps(ref, tr, cfg.train.micro_batch, tok.pad_id, avg, d.device, autocast)
        val_cache = reference_logps(ref, val, cfg.train.micro_batch, tok.pad_id, avg, d.device, autocast)
        ref = None
        D.print0(f"dpo: cached reference log-probs of {len(tr) + len(val):,} pairs")

    def make(idx: list[int]) -> dict[str, torch.Tensor]:
        b = collate_dpo([tr[i] for i in idx], tok.pad_id)
        if tr_cache is not None:
            b["ref_logps"] = tr_cache[idx].T.reshape(-1)  # [chosen..., rejected...]
        return b

    batches = ItemBatches(len(tr), cfg.train.micro_batch, make, cfg.train.seed, d.dp_rank, d.dp)
    loss_fn = make_dpo_loss(cfg, ref)
    evaluate = make_dpo_evaluate(val, cfg, tok.pad_id, loss_fn, val_cache) if val else None
    D.print0(
        f"dpo: {counts['train']:,} train / {counts['val']:,} val pairs; {counts['truncated']} truncated, "
        f"{counts['dropped_no_trainable_token']} dropped; beta {cfg.beta}, loss {cfg.loss_type}, "
        f"reference {'cached' if cfg.cache_ref else 'live'} from {ref_src}"
    )
    inputs = [data_lineage, ck_lineage] + ([ref_lineage] if cfg.ref else [])
    # the reference is recorded (path + weights fingerprint) so `llmctl eval --task prefs` can score the
    # model's implicit reward against it
    summary = run_training(
        "dpo",
        model,
        mc,
        tok,
        cfg,
        run_dir,
        inputs,
        loss_fn,
        batches,
        evaluate,
        counts,
        resume,
        overwrite,
        extra={"reference": ref_lineage, **lora},
        seq_len=cfg.max_len,
    )
    return {**summary, "data": counts}
