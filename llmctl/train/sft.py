"""`llmctl sft`: supervised fine-tuning with the loss on assistant tokens only, on the shared loop.

Batch builder: examples (chat-template ids + a trained-token mask, see `llmctl.data.chat_data`)
are packed first-fit, in a seeded order, into windows of `max_len` tokens (`batch_size` and
`micro_batch` count these windows, as TRL's batch sizes count packed sequences; the run prints
how many examples a step holds on average, `examples_per_step` in the manifest); each example keeps
its own `doc_ids` value, so attention is block-diagonal and RoPE positions restart at 0 for
every example: a packed window computes exactly what the examples alone would.

Loss: the mean next-token NLL over target positions whose token is trained (an assistant reply
and its <|end|>); prompt, role markers, padding and the first token of each example get none.
A micro-batch with no trained token raises instead of returning a silent zero. Under gradient
accumulation the loop averages the micro-batch means (each micro-batch weighs the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmctl.data.chat_data import Encoded, ItemBatches, encode_conversation, read_rows, sft_conversations, split_of
from llmctl.errors import UsageError
from llmctl.train import distributed as D
from llmctl.train.finetune import IGNORE, load_start, run_training, use_lora
from llmctl.train.loop import TrainConfig
from llmctl.train.run_dir import training_stage


def _sft_train() -> TrainConfig:
    return TrainConfig(
        steps=200,
        batch_size=16,
        micro_batch=8,
        lr=1e-4,
        warmup_steps=10,
        eval_every=50,
        ckpt_every=100,
        weight_decay=0.0,
    )


@dataclass
class SFTConfig:
    max_len: int = 512  # tokens per example (longer ones are cut, see chat_data) and per packed window
    val_fraction: float = 0.05  # held-out share when the data has no `split` column
    pack: bool = True  # False: one example per row, right-padded
    train: TrainConfig = field(default_factory=_sft_train)


# ----------------------------------------------------------------------------- batch builder


def labels_for(e: Encoded) -> list[int]:
    """Next-token targets: ids[i+1] where that token is trained, else IGNORE."""
    return [e.ids[i + 1] if e.mask[i + 1] else IGNORE for i in range(len(e.ids) - 1)] + [IGNORE]


def pack(lengths: list[int], max_len: int, order: list[int]) -> list[list[int]]:
    """First-fit packing of examples (visited in `order`) into windows of at most max_len tokens."""
    windows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for w, r in enumerate(room):
            if n <= r:
                windows[w].append(i)
                room[w] -= n
                break
        else:
            windows.append([i])
            room.append(max_len - n)
    return windows


def collate_windows(examples: list[Encoded], windows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """(B, T) input_ids, labels and doc_ids for windows of examples; T = the longest window."""
    t = max(sum(len(examples[i].ids) for i in w) for w in windows)
    ids = torch.full((len(windows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), t), IGNORE, dtype=torch.long)
    docs = torch.full((len(windows), t), -1, dtype=torch.long)  # padding is its own "document"
    for b, w in enumerate(windows):
        pos = 0
        for k, i in enumerate(w):
            e = examples[i]
            n = len(e.ids)
            ids[b, pos : pos + n] = torch.tensor(e.ids)
            labels[b, pos : pos + n] = torch.tensor(labels_for(e))
            docs[b, pos : pos + n] = k
            pos += n
    return {"input_ids": ids, "labels": labels, "doc_ids": docs}


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean NLL over trained target tokens; an error when the batch has none."""
    logits = model(batch["input_ids"], doc_ids=batch.get("doc_ids"))
    labels = batch["labels"]
    n = int((labels != IGNORE).sum())
    if n == 0:
        raise UsageError("an SFT batch has no trainable (assistant) token: check the data's masking and max_len")
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return nll / n, {"response_tokens": n}


def make_sft_evaluate(examples: list[Encoded], max_len: int, micro_batch: int, pad_id: int):
    """Held-out response loss: summed NLL / trained tokens over all val examples (split over ranks)."""
    windows = pack([len(e.ids) for e in examples], max_len, list(range(len(examples))))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        d = D.info()
        mine = windows[d.dp_rank :: d.dp]
        tot = torch.zeros(2, dtype=torch.float64)
        for s in range(0, len(mine), micro_batch):
            b = {k: v.to(d.device) for k, v in collate_windows(examples, mine[s : s + micro_batch], pad_id).items()}
            logits = model(b["input_ids"], doc_ids=b["doc_ids"])
            nll = F.cross_entropy(
                logits.flatten(0, 1).float(), b["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
            )
            tot += torch.tensor([nll.item(), float((b["labels"] != IGNORE).sum())], dtype=torch.float64)
        D.all_reduce_sum(tot)
        return {"val_loss": (tot[0] / tot[1].clamp(min=1)).item()}

    return evaluate


def encode_sft(
    tok: Any, rows: list[dict[str, Any]], max_len: int, val_fraction: float, seed: int, where: str = "data"
) -> tuple[list[Encoded], list[Encoded], dict[str, int]]:
    """(train, val, counts): encoded conversations, truncated per policy; untrainable ones dropped."""
    convs = sft_conversations(rows, where)
    out: dict[str, list[Encoded]] = {"train": [], "val": []}
    counts = {"examples": len(convs), "truncated": 0, "dropped_no_trainable_token": 0}
    for r, c in zip(rows, convs):
        e = encode_conversation(tok, c, max_len)
        counts["truncated"] += e.truncated
        if not any(e.mask[1:]):
            counts["dropped_no_trainable_token"] += 1
            continue
        out[split_of(r, c, val_fraction, seed)].append(e)
    if not out["train"]:
        raise UsageError(
            f"{where}: no training example with a trainable (assistant) token "
            f"({counts['dropped_no_trainable_token']} dropped, {len(out['val'])} held out)"
        )
    counts.update(train=len(out["train"]), val=len(out["val"]))
    return out["train"], out["val"], counts


# ----------------------------------------------------------------------------- the stage


@training_stage("run_dir")
def run_sft(
    data: str | Path,
    from_ckpt: str | Path,
    run_dir: str | Path,
    cfg: SFTConfig,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune a checkpoint on SFT data; returns the loop summary plus data counts."""
    d = D.init(cfg.train.device, cfg.train.tp)
    model, mc, tok, ck_lineage = load_start(from_ckpt, cfg.max_len)
    lora = use_lora(model, cfg.train, ck_lineage, "sft")
    rows, data_lineage = read_rows(data)
    tr, val, counts = encode_sft(tok, rows, cfg.max_len, cfg.val_fraction, cfg.train.seed, str(data))
    lengths = [len(e.ids) for e in tr]
    g = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(tr), generator=g).tolist()
    windows = pack(lengths, cfg.max_len, order) if cfg.pack else [[i] for i in order]
    batches = ItemBatches(
        len(windows),
        cfg.train.micro_batch,
        lambda idx: collate_windows(tr, [windows[i] for i in idx], tok.pad_id),
        cfg.train.seed,
        d.dp_rank,
        d.dp,
    )
    evaluate = make_sft_evaluate(val, cfg.max_len, cfg.train.micro_batch, tok.pad_id) if val else None
    trained = sum(sum(e.mask[1:]) for e in tr)
    counts.update(
        windows=len(windows),
        train_tokens=sum(lengths),
        trained_tokens=trained,
        fill=round(sum(lengths) / (len(windows) * cfg.max_len), 3),
    )
    per_step = cfg.train.batch_size * len(tr) / len(windows)
    counts["examples_per_step"] = round(per_step, 2)
    D.print0(
        f"sft: {counts['train']:,} train / {counts['val']:,} val examples; {counts['truncated']} truncated, "
        f"{counts['dropped_no_trainable_token']} dropped (no trainable token); {len(windows):,} windows of "
        f"{cfg.max_len} ({100 * counts['fill']:.0f}% full), {trained:,} of {sum(lengths):,} tokens trained; "
        f"a step of {cfg.train.batch_size} {'windows' if cfg.pack else 'examples'} holds ~{per_step:.1f} examples"
    )
    if evaluate is None:
        D.print0("warning: no held-out examples: no validation loss")
    summary = run_training(
        "sft",
        model,
        mc,
        tok,
        cfg,
        run_dir,
        [data_lineage, ck_lineage],
        sft_loss,
        batches,
        evaluate,
        counts,
        resume,
        overwrite,
        extra=lora,
        seq_len=cfg.max_len,
    )
    return {**summary, "data": counts}
