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


@pytest.mark.parametrize(
    "task, options, message",
    [
        ("nosuch", {}, "unknown eval task nosuch"),
        ("mc", {"mc.data": "/nope.csv"}, "/nope.csv: no such multiple-choice file"),
        ("exact_match", {"exact_match.data": "/nope.jsonl", "exact_match.chat": True}, "/nope.jsonl: no such JSONL"),
        ("judge", {"judge.prompts": "/nope.jsonl", "judge.baseline": "CK", "judge.judge": "CK"}, "no such prompts"),
        ("judge", {"judge.prompts": "P", "judge.baseline": "CK"}, "exactly one of --judge MODEL and --judge-url"),
        ("lm-eval:x", {"lm_eval.include": "/nope"}, "--lm-eval-include /nope: no such directory"),
    ],
)
def test_missing_inputs_and_unknown_tasks_are_one_line_with_nothing_written(tmp_path, task, options, message):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": "Say hi."}) + "\n")
    cfg = EvalConfig(tasks=[task])
    for key, val in options.items():
        section, name = key.split(".")
        val = {"CK": str(ck), "P": str(prompts)}.get(val, val) if isinstance(val, str) else val
        setattr(getattr(cfg, section), name, val)
    with pytest.raises(UsageError, match=message) as e:
        run_eval(ck, tmp_path / "out", cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_chat_without_a_chat_template_is_one_line(tmp_path):
    from hf_helpers import qwen2_chat_dir

    hf = qwen2_chat_dir(tmp_path / "qwen")
    conf = json.loads((hf / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (hf / "tokenizer_config.json").write_text(json.dumps(conf))
    for f in hf.glob("chat_template.j*"):
        f.unlink()
    mmlu = Path(__file__).resolve().parents[1] / "fixtures" / "mmlu"
    data = tmp_path / "em.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    for task, section, path in (("mc", "mc", mmlu), ("exact_match", "exact_match", data)):
        cfg = EvalConfig(tasks=[task])
        getattr(cfg, section).data, getattr(cfg, section).chat, getattr(cfg, section).limit = str(path), True, 1
        with pytest.raises(UsageError, match="has no chat template; --chat needs one"):
            run_eval(hf, tmp_path / f"out_{task}", cfg)
        assert not (tmp_path / f"out_{task}").exists()
