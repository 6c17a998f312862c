"""eval stop_rate: whether answers end on a stop token within the budget, against a plain greedy loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from eval_helpers import resave_weights, tiny_checkpoint, tokenizer  # noqa: E402

from llmctl.errors import UsageError  # noqa: E402
from llmctl.eval.lm import load_lm  # noqa: E402
from llmctl.eval.runner import EvalConfig, run_eval  # noqa: E402

PROMPTS = [
    "Tell me a story about a cat.",
    "What is two plus two?",
    "Lily went to the park.",
    "Why is the sky blue?",
    "Name a colour.",
    "Say hello.",
    "The dog ran.",
    "Once upon a time",
]
BUDGET = 8


def stopping_checkpoint(tmp: Path) -> Path:
    """A tiny random model whose stop-token logits are scaled by 2.2: some answers end early, some not."""
    ck = tiny_checkpoint(tmp / "ck", tmp, seed=3)
    w = load_file(str(ck / "model.safetensors"))
    for s in tokenizer().stop_ids:
        w["lm_head.weight"][s] *= 2.2
    resave_weights(ck, w)
    return ck


def greedy_lengths(ck: Path) -> list[tuple[int, bool]]:
    """(new tokens, stopped) per prompt: full forward passes, no cache, no batching."""
    tok, model = tokenizer(), load_lm(ck).model
    out = []
    for p in PROMPTS:
        ids, new = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True), []
        stopped = False
        with torch.no_grad():
            while len(new) < BUDGET:
                nxt = int(model(torch.tensor([ids + new]))[0, -1].argmax())
                if nxt in tok.stop_ids:
                    stopped = True
                    break
                new.append(nxt)
        out.append((len(new), stopped))
    return out


def test_stop_rate_matches_a_plain_greedy_loop(tmp_path):
    ck = stopping_checkpoint(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    expected = greedy_lengths(ck)
    n_stopped = sum(s for _, s in expected)
    assert 0 < n_stopped < len(PROMPTS)  # the model is built to give a mix
    for batch_size in (1, 3):
        cfg = EvalConfig(tasks=["stop_rate"], progress=False, batch_size=batch_size)
        cfg.stop_rate.prompts, cfg.stop_rate.max_new_tokens = str(prompts), BUDGET
        out = tmp_path / f"res{batch_size}"
        rows = {r["metric"]: r for r in run_eval(ck, out, cfg)["stats"]["results"]}
        assert rows["stop_rate"]["value"] == pytest.approx(n_stopped / len(PROMPTS))
        assert rows["mean_new_tokens"]["value"] == pytest.approx(sum(k for k, _ in expected) / len(PROMPTS))
        assert rows["stop_rate"]["n"] == len(PROMPTS)
        items = pq.read_table(out / "_samples" / "stop_rate").to_pylist()
        assert [(r["new_tokens"], r["stopped"]) for r in items] == expected


def test_stop_rate_refuses_a_budget_the_context_would_cut(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path)  # context 64
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    cfg = EvalConfig(tasks=["stop_rate"], progress=False)
    cfg.stop_rate.prompts, cfg.stop_rate.max_new_tokens = str(prompts), 64
    with pytest.raises(UsageError, match="below"):
        run_eval(ck, tmp_path / "res", cfg)
    cfg.stop_rate.format = "html"
    with pytest.raises(UsageError, match="chat or plain"):
        run_eval(ck, tmp_path / "res", cfg)
