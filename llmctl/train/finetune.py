"""What the fine-tuning stages (sft, reward, dpo, rl) share: the start checkpoint, the run, pair batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmctl.config import to_dict
from llmctl.data.chat_data import Encoded, encode_responses, is_degenerate, pref_triples, split_of
from llmctl.errors import UsageError
from llmctl.model.checkpoint import WEIGHTS, load_checkpoint, read_model_config, resolve_checkpoint
from llmctl.store.dataset import fingerprint_file
from llmctl.tokenizer.spm import Tokenizer
from llmctl.train import distributed as D
from llmctl.train.loop import train
from llmctl.train.parallel import check_divisible
from llmctl.train.run_dir import training_run

IGNORE = -100  # label of a position that gets no loss (F.cross_entropy's ignore_index)


def load_start(ckpt: str | Path, max_len: int | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, model config, tokenizer, lineage) of the checkpoint training starts from; `max_len`,
    when given, must fit the model's context."""
    path = resolve_checkpoint(ckpt)
    check_divisible(read_model_config(path), D.info().tp)  # --tp: before the model is built
    model, mc, tok_dir, man = load_checkpoint(path)
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
        "fingerprint": fingerprint_file(path / WEIGHTS),
    }
    return model, mc, Tokenizer.load(tok_dir), lineage


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
