"""eval's results are reused only while every input they were computed from is unchanged: an input
edited or replaced at the same path is a one-line refusal (nothing rewritten), --overwrite
re-runs on the new content, and an unchanged re-run reuses the results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from eval_helpers import VOCAB, save_tokenizer, tiny_checkpoint, write_documents

from llmctl.errors import UsageError
from llmctl.eval.runner import EvalConfig, run_eval
from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.transformer import ModelConfig
from llmctl.train.reward import RewardModel


def _reward_model(path: Path, tmp: Path, seed: int) -> Path:
    tok_dir = tmp / "tok"
    if not (tok_dir / "llmctl_tokenizer.json").is_file():
        save_tokenizer(tok_dir)
    mc = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=32, max_seq_len=128, tie_embeddings=False)
    torch.manual_seed(seed)
    model = RewardModel(mc)
    torch.nn.init.normal_(model.score_head.weight, 0.0, 1.0)
    if path.exists():
        shutil.rmtree(path)
    return save_checkpoint(path, model, mc, tokenizer_dir=tok_dir)


def _pairs(path: Path, n: int) -> Path:
    rows = [{"prompt": f"Say thing {i}.", "chosen": f"good kind {i}", "rejected": "bad"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _n(m, metric):
    return next(r["n"] for r in m["stats"]["results"] if r["metric"] == metric)


def test_edited_prefs_data_or_reward_model_is_not_reported_stale(tmp_path):
    rm = _reward_model(tmp_path / "rm", tmp_path, 1)
    data = _pairs(tmp_path / "pairs.jsonl", 12)
    out = tmp_path / "res"

    def cfg():
        c = EvalConfig(tasks=["prefs"], batch_size=4, progress=False)
        c.prefs.data, c.prefs.split = str(data), "all"
        return c

    first = run_eval(rm, out, cfg())
    assert _n(first, "accuracy") == 12
    assert run_eval(rm, out, cfg())["timings"] == first["timings"]  # unchanged: reused, not re-run
    _pairs(data, 20)  # edited in place
    with pytest.raises(UsageError, match=r"pairs\.jsonl changed"):
        run_eval(rm, out, cfg())
    assert json.loads((out / "_manifest.json").read_text())["stats"]["results"] == first["stats"]["results"]
    again = run_eval(rm, out, cfg(), overwrite=True)
    assert _n(again, "accuracy") == 20
    _reward_model(rm, tmp_path, 2)  # other weights at the same path
    with pytest.raises(UsageError, match="changed"):
        run_eval(rm, out, cfg())


def test_replaced_ppl_dataset_is_not_reported_stale(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path)
    docs = tmp_path / "docs"
    write_documents(docs, [["Once upon a time there was a cat."] * 2])
    out = tmp_path / "res"

    def cfg():
        c = EvalConfig(tasks=["perplexity"], batch_size=4, progress=False)
        c.perplexity.data = str(docs)
        return c

    assert _n(run_eval(ck, out, cfg()), "documents") == 2
    shutil.rmtree(docs)
    write_documents(docs, [["Once upon a time there was a dog."] * 5])  # replaced at the same path
    with pytest.raises(UsageError, match="docs changed"):
        run_eval(ck, out, cfg())
    assert _n(run_eval(ck, out, cfg(), overwrite=True), "documents") == 5
