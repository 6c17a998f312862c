"""`llmctl reward`: train a reward model on preference pairs (Bradley-Terry), and score a dataset with one.

The model (`llmctl.model.reward.RewardModel`) subclasses `Transformer`, so the shared loop saves,
resumes and wraps it (DDP/FSDP) unchanged; its checkpoint is marked `"model_kind": "reward"`.

Loss: -log sigmoid(r_chosen - r_rejected), the mean over pairs. Chosen and rejected of a pair go
through one forward as rows i and B+i of a 2B batch. Held-out metrics: accuracy (share of pairs
with r_chosen > r_rejected; ties count as wrong), mean margin r_chosen - r_rejected, and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F

from llmctl.data.chat_data import Encoded, ItemBatches, read_rows
from llmctl.errors import UsageError
from llmctl.model.checkpoint import resolve_checkpoint, weights_file
from llmctl.model.reward import RewardModel, RewardScorer, load_reward_model, score
from llmctl.store.dataset import StageOutput, fingerprint_file
from llmctl.store.lock import exclusive_output
from llmctl.train import distributed as D
from llmctl.train.finetune import collate_pairs, encode_prefs, load_start, run_training, use_lora
from llmctl.train.loop import TrainConfig
from llmctl.train.run_dir import training_stage

# Names this module has always offered, kept for callers that import them from here.
__all__ = [
    "RewardConfig",
    "RewardModel",
    "RewardScorer",
    "bt_loss",
    "collate_pairs",
    "encode_prefs",
    "load_reward_model",
    "make_rm_evaluate",
    "rm_loss",
    "run_reward",
    "score",
    "score_dataset",
]


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(r_c - r_r)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def rm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    r = model(batch["input_ids"], last_index=batch["last_index"])
    b = r.shape[0] // 2
    rc, rr = r[:b], r[b:]
    return bt_loss(rc, rr), {"accuracy": (rc > rr).float().mean().detach(), "margin": (rc - rr).mean().detach()}


def make_rm_evaluate(pairs: list[tuple[Encoded, Encoded]], micro_batch: int, pad_id: int):
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        d = D.info()
        mine = pairs[d.dp_rank :: d.dp]
        tot = torch.zeros(4, dtype=torch.float64)  # loss sum, correct, margin sum, n
        for s in range(0, len(mine), micro_batch):
            b = {k: v.to(d.device) for k, v in collate_pairs(mine[s : s + micro_batch], pad_id).items()}
            r = model(b["input_ids"], last_index=b["last_index"])
            n = r.shape[0] // 2
            rc, rr = r[:n].double(), r[n:].double()
            tot += torch.stack(
                [
                    -F.logsigmoid(rc - rr).sum(),
                    (rc > rr).sum(),
                    (rc - rr).sum(),
                    torch.tensor(float(n), dtype=torch.float64),
                ]
            ).cpu()
        D.all_reduce_sum(tot)
        n = max(tot[3].item(), 1.0)
        return {"val_loss": tot[0].item() / n, "val_accuracy": tot[1].item() / n, "val_margin": tot[2].item() / n}

    return evaluate


def _rm_train() -> TrainConfig:
    return TrainConfig(
        steps=200,
        batch_size=16,
        micro_batch=8,
        lr=5e-5,
        warmup_steps=10,
        eval_every=50,
        ckpt_every=100,
        weight_decay=0.0,
    )


@dataclass
class RewardConfig:
    max_len: int = 512
    val_fraction: float = 0.05
    train: TrainConfig = field(default_factory=_rm_train)


@training_stage("run_dir")
def run_reward(
    data: str | Path,
    from_ckpt: str | Path,
    run_dir: str | Path,
    cfg: RewardConfig,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a reward model from a checkpoint on preference pairs; returns the loop summary."""
    d = D.init(cfg.train.device, cfg.train.tp)
    base, mc, tok, ck_lineage = load_start(from_ckpt, cfg.max_len)
    torch.manual_seed(cfg.train.seed)
    model = RewardModel(mc)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert missing == ["score_head.weight"] and not unexpected, (missing, unexpected)
    lora = use_lora(model, cfg.train, ck_lineage, "reward", heads=("score_head",))
    rows, data_lineage = read_rows(data)
    tr, val, counts = encode_prefs(tok, rows, cfg.max_len, cfg.val_fraction, cfg.train.seed, str(data))
    # batch_size and micro_batch count pairs (as TRL's batch sizes do): a forward sees 2 x micro_batch rows.
    batches = ItemBatches(
        len(tr),
        cfg.train.micro_batch,
        lambda idx: collate_pairs([tr[i] for i in idx], tok.pad_id),
        cfg.train.seed,
        d.dp_rank,
        d.dp,
    )
    evaluate = make_rm_evaluate(val, cfg.train.micro_batch, tok.pad_id) if val else None
    D.print0(
        f"reward: {counts['train']:,} train / {counts['val']:,} val pairs; {counts['truncated']} truncated, "
        f"{counts['dropped_no_trainable_token']} dropped"
    )
    summary = run_training(
        "reward",
        model,
        mc,
        tok,
        cfg,
        run_dir,
        [data_lineage, ck_lineage],
        rm_loss,
        batches,
        evaluate,
        counts,
        resume,
        overwrite,
        extra={"model_kind": "reward", **lora},
        seq_len=cfg.max_len,
    )
    return {**summary, "data": counts}


@exclusive_output("out", discard_unfinished=True)
def score_dataset(
    rm_dir: str | Path, data: str | Path, out: str | Path, overwrite: bool = False, batch_size: int = 16
) -> dict[str, Any]:
    """Copy DATA with a `reward` column (prompt/response rows) or `reward_chosen`/`reward_rejected` (pairs)."""
    rows, lineage = read_rows(data)
    if not rows:
        raise UsageError(f"{data}: no rows")
    cols = set(rows[0])
    if {"prompt", "response"} <= cols:
        targets = {"reward": "response"}
    elif {"prompt", "chosen", "rejected"} <= cols:
        targets = {"reward_chosen": "chosen", "reward_rejected": "rejected"}
    else:
        raise UsageError(
            f"{data}: expected `prompt` + `response` (or + `chosen` + `rejected`); found {', '.join(sorted(cols))}"
        )
    ck = resolve_checkpoint(rm_dir)
    rm_lineage = {"path": str(ck.resolve()), "stage": "reward", "fingerprint": fingerprint_file(weights_file(ck))}
    so = StageOutput(out, "reward_score", _ScoreCfg(), inputs=[lineage, rm_lineage], overwrite=overwrite)
    if so.complete:
        return so.manifest
    scorer = load_reward_model(ck)
    table = pa.Table.from_pylist(rows)
    stats: dict[str, Any] = {"rows": len(rows)}
    prompts = [r["prompt"] for r in rows]
    if len(targets) == 2:  # pairs: scored as the reward stage trains on them
        got = dict(
            zip(
                targets,
                scorer.score_pairs(prompts, [r["chosen"] for r in rows], [r["rejected"] for r in rows], batch_size),
            )
        )
    else:
        got = {"reward": scorer.score(prompts, [r["response"] for r in rows], batch_size)}
    for name, vals in got.items():
        table = table.append_column(name, pa.array(vals, pa.float32()))
        stats[f"mean_{name}"] = sum(vals) / len(vals)
    if len(targets) == 2:
        stats["accuracy"] = sum(
            a > b for a, b in zip(table["reward_chosen"].to_pylist(), table["reward_rejected"].to_pylist())
        ) / len(rows)
    w = so.shard_writer("part-00000.parquet", table.schema)
    w.write_table(table)
    so.finish_task("part-00000", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    return so.finalize(["part-00000"], table.schema, stats=stats)


@dataclass
class _ScoreCfg:
    max_len: int = 0  # the reward model's max_seq_len
