"""`llmctl quality annotate --judge MODEL`: a judge model run in this process (batched greedy
generation), its answers parsed into grades, unparsed answers counted, and a killed run resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import tiny_checkpoint
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.cli.quality import LocalJudge
from llmctl.data import annotate as A
from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, save_checkpoint
from llmctl.serve.load import load_model
from llmctl.store.dataset import Dataset

DOCS = {f"d{i}": f"Document number {i} explains how plants turn light into sugar." for i in range(5)}


def chain_judge(tmp: Path, name: str, answer: str) -> Path:
    """A tiny model that, whatever the document, answers `answer` and stops: its blocks are zeroed,
    so a token's logits depend on that token only, and each token of the chain (the chat prompt's
    last token, then the answer's tokens) points at the next, the last at end of sequence."""
    base = tiny_checkpoint(tmp / f"{name}-base", tmp)
    model, cfg, tok_dir, _ = load_checkpoint(base)
    _, codec, _ = load_model(str(base))
    chain = [codec.chat([{"role": "user", "content": "x"}])[-1], *codec.encode(answer), codec.eos_id]
    assert len(set(chain)) == len(chain) <= cfg.d_model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        for k, (tok, nxt) in enumerate(zip(chain, chain[1:])):
            model.embed_tokens.weight[tok, k] = 1.0
            model.lm_head.weight[nxt, k] = 10.0
    return save_checkpoint(tmp / name, model, cfg, tokenizer_dir=tok_dir)


@pytest.fixture
def docs(tmp_path) -> str:
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in DOCS.items()))
    return str(p)


def test_grades_from_a_local_judge_land_in_a_dataset(tmp_path, docs):
    judge = chain_judge(tmp_path, "grader", "Score: 3")
    out = tmp_path / "g"
    cmd = ["quality", "annotate", docs, "-o", str(out), "--judge", str(judge), "--batch-size", "2"]
    r = CliRunner().invoke(app, [*cmd, "--set", "max_tokens=12"])
    assert r.exit_code == 0, r.output
    assert "graded 5 of 5 documents" in r.output and "0 answers without a grade" in r.output
    ds = Dataset.open(out, stage="quality.annotate")
    rows = {x["id"]: x for x in ds.iter_rows()}
    assert {i: (x["text"], x["answer"], x["grade"], x["judge"]) for i, x in rows.items()} == {
        i: (t, "Score: 3", 3, str(judge)) for i, t in DOCS.items()
    }
    assert ds.manifest["stats"]["grades"]["3"] == 5


def test_unparsed_answers_are_counted(tmp_path, docs):
    judge = chain_judge(tmp_path, "shrug", "maybe")
    m = A.annotate(
        [docs], tmp_path / "g", A.AnnotateConfig(judge=str(judge), max_tokens=12), judge=LocalJudge(str(judge), 12, 3)
    )
    assert m["stats"]["unparsed"] == 5 and m["stats"]["graded"] == 0
    assert {r["answer"] for r in Dataset.open(tmp_path / "g").iter_rows()} == {"maybe"}


def test_batched_answers_equal_one_document_at_a_time(tmp_path):
    """A random tiny model: batching (left padding) does not change the greedy answers."""
    ckpt = tiny_checkpoint(tmp_path / "rand", tmp_path, seed=3)
    prompts = [f"Grade this: {t[: 10 + 7 * i]}" for i, t in enumerate(DOCS.values())]
    batched = list(LocalJudge(str(ckpt), 6, 5).answers(prompts))
    alone = [next(LocalJudge(str(ckpt), 6, 1).answers([p])) for p in prompts]
    assert batched == alone and all(isinstance(a, str) for a in batched)


def test_a_killed_local_run_resumes_without_asking_again(tmp_path, docs, monkeypatch):
    judge = chain_judge(tmp_path, "grader", "Score: 3")
    cfg = A.AnnotateConfig(judge=str(judge), max_tokens=12)
    asked: list[str] = []
    real = LocalJudge.answers

    def dying(self, prompts):
        for n, answer in enumerate(real(self, prompts)):
            if n == 2:
                raise KeyboardInterrupt
            asked.append(answer)
            yield answer

    monkeypatch.setattr(LocalJudge, "answers", dying)
    with pytest.raises(KeyboardInterrupt):
        A.annotate([docs], tmp_path / "g", cfg, judge=LocalJudge(str(judge), 12, 2))
    monkeypatch.setattr(LocalJudge, "answers", real)
    seen: list[int] = []
    local = LocalJudge(str(judge), 12, 2)
    orig = local.answers
    local.answers = lambda prompts: (seen.append(len(prompts)), orig(prompts))[1]  # type: ignore[method-assign]
    m = A.annotate([docs], tmp_path / "g", cfg, judge=local)
    assert seen == [3] and m["stats"]["resumed_answers"] == 2 and m["num_rows"] == 5


def test_a_missing_judge_model_is_one_line(tmp_path, docs):
    r = CliRunner().invoke(app, ["quality", "annotate", docs, "-o", str(tmp_path / "g"), "--judge", "nope/model"])
    assert isinstance(r.exception, UsageError) and "no such model directory" in str(r.exception)
