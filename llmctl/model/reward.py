"""The reward model: the Transformer plus a scalar `score_head`, loaded from a checkpoint to score text.

The score is read at the last non-padding token of prompt + response (right padding, so causal
attention never sees the padding and positions start at 0). A reward checkpoint is an ordinary
llmctl checkpoint plus `score_head.weight`; `load_checkpoint` refuses it as a language model
(unexpected key), `load_reward_model` loads it. Training it: `llmctl.train.reward`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from llmctl.data.chat_data import Encoded, encode_pair, encode_responses, to_messages
from llmctl.errors import UsageError
from llmctl.model.checkpoint import (
    TOKENIZER_DIR,
    WEIGHTS,
    load_lora_checkpoint,
    lora_of,
    read_model_config,
    resolve_checkpoint,
    verified,
)
from llmctl.model.lora import merge_lora, read_adapter
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.tokenizer.load import load_tokenizer


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


class RewardScorer:
    """A reward model with its tokenizer: text in, one float per (prompt, response) out."""

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
    p = resolve_checkpoint(path)
    mc = read_model_config(p)
    spec = lora_of(p)
    if spec and "score_head" in (spec.get("heads") or []):  # a LoRA reward run: base + adapters + score head
        lm = merge_lora(load_lora_checkpoint(p, spec)[0])  # its base with the adapters folded in
        model = RewardModel(mc)
        missing, _ = model.load_state_dict(lm.state_dict(), strict=False)
        assert missing == ["score_head.weight"], missing
        model.score_head.weight.data.copy_(read_adapter(p)["score_head.weight"])
        return _scorer(model, p, device)
    if spec:
        raise UsageError(f"{p}: not a reward model (no score_head; train one with `llmctl reward`)")
    state = load_file(str(verified(p, WEIGHTS)))
    if "score_head.weight" not in state:
        raise UsageError(f"{p}: not a reward model (no score_head; train one with `llmctl reward`)")
    if mc.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model = RewardModel(mc)
    model.load_state_dict(state)
    return _scorer(model, p, device)


def _scorer(model: RewardModel, p: Path, device: str) -> RewardScorer:
    man = p / "_manifest.json"
    max_len = json.loads(man.read_text()).get("config", {}).get("max_len") if man.is_file() else None
    return RewardScorer(model, load_tokenizer(p / TOKENIZER_DIR), max_len=max_len, device=device)


def score(rm: str | Path | RewardScorer, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    """Rewards of (prompt, response) pairs from a reward checkpoint (or run dir) or a loaded scorer."""
    scorer = rm if isinstance(rm, RewardScorer) else load_reward_model(rm)
    return scorer.score(prompts, responses)
