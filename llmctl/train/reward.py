"""`llmctl reward`: a reward model trained on preference pairs (Bradley-Terry), and scoring with it.

The reward model is the Transformer with one extra `score_head` (d_model -> 1, no bias) read at
the last non-padding token of prompt + response (right padding, so causal attention never sees
the padding and positions start at 0). It subclasses `Transformer`, so the shared loop saves,
resumes and wraps it (DDP/FSDP) unchanged; the checkpoint is an ordinary llmctl checkpoint plus
`score_head.weight`, marked `"model_kind": "reward"` in its manifest. `load_checkpoint` refuses
it as a language model (unexpected key), `load_reward_model` loads it.

Loss: -log sigmoid(r_chosen - r_rejected), the mean over pairs. Chosen and rejected of a pair go
through one forward as rows i and B+i of a 2B batch. Held-out metrics: accuracy (share of pairs
with r_chosen > r_rejected; ties count as wrong, so an untrained head scores 0.5 only by luck),
mean margin r_chosen - r_rejected, and the loss.

For eval (issue 7): `load_reward_model(dir)` -> `RewardScorer`; `.score(prompts, responses)`
-> list[float]; the module-level `score(dir_or_scorer, prompts, responses)` does both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmctl.data.chat_data import (
    Encoded,
    ItemBatches,
    encode_pair,
    encode_responses,
    pref_triples,
    read_rows,
    split_of,
    to_messages,
)
from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.store.lock import exclusive_output
from llmctl.train import distributed as D
from llmctl.train.loop import TrainConfig
from llmctl.train.sft import load_start, run_training


class RewardModel(Transformer):
    """Transformer + scalar head; forward(input_ids, last_index) -> rewards (B,)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.score_head = nn.Linear(cfg.d_model, 1, bias=False)
        nn.init.normal_(self.score_head.weight, 0.0, cfg.init_std)
        if not cfg.tie_embeddings:  # the lm head is not used: keep it out of the optimizer and DDP
            self.lm_head.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, last_index: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        h = self.hidden_states(input_ids, kw.get("positions"), kw.get("doc_ids"))
        if last_index is None:
            return self.score_head(h).squeeze(-1).float()  # (B, T): a reward at every position
        h_last = h[torch.arange(h.size(0), device=h.device), last_index]
        return self.score_head(h_last).squeeze(-1).float()


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(r_c - r_r)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


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


def encode_prefs(
    tok: Any, rows: list[dict[str, Any]], max_len: int, val_fraction: float, seed: int, where: str = "data"
) -> tuple[list, list, dict[str, int]]:
    """(train pairs, val pairs, counts); a pair is (chosen Encoded, rejected Encoded)."""
    triples = pref_triples(rows, where)
    out: dict[str, list] = {"train": [], "val": []}
    counts = {"pairs": len(triples), "truncated": 0, "dropped_no_trainable_token": 0}
    for r, (p, c, rj) in zip(rows, triples):
        ec, er = encode_responses(tok, p, [c, rj], max_len)
        counts["truncated"] += ec.truncated or er.truncated
        if not any(ec.mask[1:]) or not any(er.mask[1:]):
            counts["dropped_no_trainable_token"] += 1
            continue
        out[split_of(r, (p, c, rj), val_fraction, seed)].append((ec, er))
    if not out["train"]:
        raise UsageError(
            f"{where}: no usable training pair ({counts['dropped_no_trainable_token']} dropped, "
            f"{len(out['val'])} held out)"
        )
    counts.update(train=len(out["train"]), val=len(out["val"]))
    return out["train"], out["val"], counts


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
        extra={"model_kind": "reward"},
        seq_len=cfg.max_len,
    )
    return {**summary, "data": counts}


# ----------------------------------------------------------------------------- scoring (also for eval)


class RewardScorer:
    def __init__(self, model: RewardModel, tok: Any, max_len: int | None = None, device: str = "cpu"):
        self.model, self.tok, self.device = model.to(device).eval(), tok, device
        self.max_len = max_len or model.cfg.max_seq_len

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str], batch_size: int = 16) -> list[float]:
        """Reward of each (prompt, response); a prompt is a string (one user turn) or a list of messages."""
        if len(prompts) != len(responses):
            raise UsageError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self._score(
            [encode_pair(self.tok, to_messages(p), r, self.max_len) for p, r in zip(prompts, responses)], batch_size
        )

    @torch.no_grad()
    def score_pairs(
        self, prompts: Sequence[Any], chosen: Sequence[str], rejected: Sequence[str], batch_size: int = 16
    ) -> tuple[list[float], list[float]]:
        """Rewards of each pair's two replies, encoded as `llmctl reward` trains and validates on them (one
        prompt cut for both, at the run's max_len), so a held-out accuracy equals the run's own `val_accuracy`."""
        encs = [
            e
            for p, c, r in zip(prompts, chosen, rejected)
            for e in encode_responses(self.tok, to_messages(p), [c, r], self.max_len)
        ]
        vals = self._score(encs, batch_size)
        return vals[0::2], vals[1::2]

    def _score(self, encs: list[Encoded], batch_size: int) -> list[float]:
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))  # similar lengths: less padding
        out: list[float] = []
        for s in range(0, len(encs), batch_size):
            chunk = [encs[i] for i in order[s : s + batch_size]]
            t = max(len(e.ids) for e in chunk)
            ids = torch.full((len(chunk), t), self.tok.pad_id, dtype=torch.long)
            for i, e in enumerate(chunk):
                ids[i, : len(e.ids)] = torch.tensor(e.ids)
            last = torch.tensor([len(e.ids) - 1 for e in chunk])
            out += self.model(ids.to(self.device), last_index=last.to(self.device)).tolist()
        result = [0.0] * len(encs)
        for i, v in zip(order, out):
            result[i] = v
        return result


def load_reward_model(path: str | Path, device: str = "cpu") -> RewardScorer:
    """A reward checkpoint (or a `llmctl reward` run dir: its latest checkpoint) ready to score."""
    from safetensors.torch import load_file

    from llmctl.model.checkpoint import TOKENIZER_DIR, WEIGHTS, read_model_config, resolve_checkpoint
    from llmctl.tokenizer.spm import Tokenizer

    p = resolve_checkpoint(path)
    mc = read_model_config(p)
    state = load_file(str(p / WEIGHTS))
    if "score_head.weight" not in state:
        raise UsageError(f"{p}: not a reward model (no score_head; train one with `llmctl reward`)")
    if mc.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model = RewardModel(mc)
    model.load_state_dict(state)
    man = p / "_manifest.json"
    max_len = json.loads(man.read_text()).get("config", {}).get("max_len") if man.is_file() else None
    return RewardScorer(model, Tokenizer.load(p / TOKENIZER_DIR), max_len=max_len, device=device)


def score(rm: str | Path | RewardScorer, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    scorer = rm if isinstance(rm, RewardScorer) else load_reward_model(rm)
    return scorer.score(prompts, responses)


@exclusive_output("out", discard_unfinished=True)
def score_dataset(
    rm_dir: str | Path, data: str | Path, out: str | Path, overwrite: bool = False, batch_size: int = 16
) -> dict[str, Any]:
    """Copy DATA with a `reward` column (prompt/response rows) or `reward_chosen`/`reward_rejected` (pairs)."""
    import pyarrow as pa

    from llmctl.model.checkpoint import WEIGHTS, resolve_checkpoint
    from llmctl.store.dataset import StageOutput, fingerprint_file

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
    rm_lineage = {"path": str(ck.resolve()), "stage": "reward", "fingerprint": fingerprint_file(ck / WEIGHTS)}
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
