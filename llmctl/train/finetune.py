"""What the fine-tuning stages (sft, reward, dpo, rl) share: the start checkpoint, LoRA, the run, pair batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmctl.config import to_dict
from llmctl.data.chat_data import Encoded, encode_responses, is_degenerate, pref_triples, split_of
from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, read_model_config, resolve_checkpoint, weights_file
from llmctl.model.hf_import import hf_model_config, is_hf_dir
from llmctl.model.lora import apply_lora, has_lora, lora_spec, merge_lora, trainable_summary
from llmctl.store.dataset import fingerprint_file
from llmctl.tokenizer.load import load_tokenizer
from llmctl.train import distributed as D
from llmctl.train.loop import TrainConfig, train
from llmctl.train.parallel import check_divisible
from llmctl.train.run_dir import training_run

IGNORE = -100  # label of a position that gets no loss (F.cross_entropy's ignore_index)


def load_start(ckpt: str | Path, max_len: int | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, model config, tokenizer, lineage) of the checkpoint training starts from (or of a
    Hugging Face model directory, llmctl.model.hf_import, in fp32); `max_len`, when given, must fit
    the model's context. A LoRA run's checkpoint starts with its adapters merged."""
    hf = is_hf_dir(ckpt)
    path = Path(ckpt) if hf else resolve_checkpoint(ckpt)
    check_divisible(hf_model_config(path) if hf else read_model_config(path), D.info().tp)  # before the model is built
    model, mc, tok_dir, man = load_checkpoint(path)
    if has_lora(model):
        merge_lora(model)
    if tok_dir is None:
        raise UsageError(f"{path}: checkpoint has no tokenizer/ directory")
    if max_len is not None and max_len > mc.max_seq_len:
        raise UsageError(
            f"max_len {max_len} exceeds the model's max_seq_len {mc.max_seq_len} ({path}): "
            f"pass --max-len {mc.max_seq_len} or less"
        )
    lineage = {
        "path": str(path.resolve()),
        "stage": man.get("stage", "checkpoint"),
        "fingerprint": fingerprint_file(weights_file(path)) if not hf else man["files"],
    }
    return model, mc, load_tokenizer(tok_dir), lineage


def use_lora(
    model: torch.nn.Module, cfg: TrainConfig, base: dict[str, Any], stage: str, heads: tuple[str, ...] = ()
) -> dict[str, Any]:
    """With `cfg.lora.r` > 0: adapters on the targeted layers, everything else frozen but `heads`
    (trained in full and saved with the adapters); returns the run manifest's {"lora": spec + base
    lineage} (which makes its checkpoints adapter-only), else {}."""
    if not cfg.lora.r:
        return {}
    if cfg.tp > 1:
        raise UsageError(f"{stage}: LoRA runs alone, under DDP or FSDP2 (torchrun), not with --tp yet")
    layers = apply_lora(model, cfg.lora, seed=cfg.seed)
    for h in heads:
        model.get_submodule(h).requires_grad_(True)
    n_train, n_all = trainable_summary(model)
    spec = lora_spec(cfg.lora, heads)
    D.print0(
        f"{stage}: LoRA r {spec['r']}, alpha {spec['alpha']:g}, dropout {spec['dropout']:g} on {len(layers)} layers "
        f"({','.join(spec['targets'])}); {n_train:,} of {n_all:,} parameters train ({100 * n_train / n_all:.2f}%)"
    )
    return {"lora": {**spec, "base": base}}


def run_training(
    stage: str,
    model: torch.nn.Module,
    mc: Any,
    tok: Any,
    cfg: Any,
    run_dir: str | Path,
    inputs: list[dict],
    loss_fn: Callable,
    batches: Any,
    evaluate: Callable | None,
    stats: dict[str, Any],
    resume: bool,
    overwrite: bool,
    extra: dict[str, Any] | None = None,
    seq_len: int = 512,
) -> dict[str, Any]:
    """Hold the run dir, run the shared loop, write the run's _manifest.json; returns the summary.

    Re-running the same command resumes (`resume` is accepted and changes nothing); a finished run
    returns its summary without training (see llmctl.train.run_dir)."""
    with training_run(stage, run_dir, cfg, inputs, overwrite) as run:
        if run.complete:
            return run.summary
        manifest = {"stage": stage, "config": to_dict(cfg), "inputs": inputs, "data": stats, **(extra or {})}
        summary = train(
            model,
            mc,
            loss_fn,
            batches,
            cfg.train,
            run_dir,
            evaluate=evaluate,
            tokenizer_dir=tok.path,
            manifest=manifest,
            resume=run.resume,
            flops_per_token=model.flops_per_token(seq_len),
            begin=run.begin,
        )
        return run.finish(summary, manifest, mc.to_dict())


# ----------------------------------------------------------------------------- preference pairs (reward, dpo)


def encode_prefs(
    tok: Any, rows: list[dict[str, Any]], max_len: int, val_fraction: float, seed: int, where: str = "data"
) -> tuple[list, list, dict[str, int]]:
    """(train pairs, val pairs, counts); a pair is (chosen Encoded, rejected Encoded)."""
    triples = pref_triples(rows, where)
    out: dict[str, list] = {"train": [], "val": []}
    counts = {"pairs": len(triples), "truncated": 0, "dropped_no_trainable_token": 0, "dropped_identical_replies": 0}
    for r, (p, c, rj) in zip(rows, triples):
        if is_degenerate(c, rj):  # no preference to learn (DPO loss log 2, zero gradient)
            counts["dropped_identical_replies"] += 1
            continue
        ec, er = encode_responses(tok, p, [c, rj], max_len)
        counts["truncated"] += ec.truncated or er.truncated
        if not any(ec.mask[1:]) or not any(er.mask[1:]):
            counts["dropped_no_trainable_token"] += 1
            continue
        out[split_of(r, (p, c, rj), val_fraction, seed)].append((ec, er))
    if not out["train"]:
        raise UsageError(
            f"{where}: no usable training pair ({counts['dropped_no_trainable_token']} dropped with no "
            f"trainable token, {counts['dropped_identical_replies']} with identical replies, "
            f"{len(out['val'])} held out)"
        )
    if counts["dropped_identical_replies"]:
        D.print0(
            f"{where}: dropped {counts['dropped_identical_replies']} pair(s) whose chosen and rejected replies "
            "are identical (no preference to learn)"
        )
    counts.update(train=len(out["train"]), val=len(out["val"]))
    return out["train"], out["val"], counts


def collate_pairs(pairs: list[tuple[Encoded, Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """2B right-padded rows (chosen 0..B-1, rejected B..2B-1), their last-token index and labels mask."""
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    t = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        mask[i, : len(s.ids)] = torch.tensor(s.mask)
    last = torch.tensor([len(s.ids) - 1 for s in seqs])
    return {"input_ids": ids, "last_index": last, "response_mask": mask}
