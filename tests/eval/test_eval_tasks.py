"""eval tasks: contamination on planted overlaps, exact-match extraction, degeneration metrics,
generation parity with `llmctl generate`, a Hugging Face directory as the model, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from eval_helpers import tiny_checkpoint, tinystories_docs, tokenizer, write_documents  # noqa: E402

from llmctl.eval.lm import load_lm  # noqa: E402
from llmctl.eval.runner import EvalConfig, run_eval  # noqa: E402
from llmctl.eval.tasks import (
    contamination,  # noqa: E402
    degeneration,
    exact_match,
)
from llmctl.store.dataset import Dataset  # noqa: E402

MMLU_ANATOMY = Path(__file__).parents[1] / "fixtures" / "mmlu" / "val" / "anatomy_val.csv"


def test_contamination_count_is_exact_on_planted_overlaps(tmp_path):
    from llmctl.eval.tasks.mc import read_items

    items = read_items(MMLU_ANATOMY)
    texts = [" ".join([it["question"], *it["choices"]]) for it in items]
    long_ids = [i for i, t in enumerate(texts) if len(contamination.words(t)) >= 13]
    planted = long_ids[::3][:4]
    train = tinystories_docs(60)
    # plant an exact 13-word span (different case and punctuation) inside three training documents,
    # and a 12-word span (one short of an n-gram) of another item, which must not count
    for k, i in enumerate(planted):
        ws = contamination.words(texts[i])
        span = " ".join(ws[2:15]).upper() + "!"
        train[5 + 10 * k] = train[5 + 10 * k] + " ... " + span + " and more."
    near = long_ids[1]
    train[7] += " " + " ".join(contamination.words(texts[near])[:12])
    ds = write_documents(tmp_path / "train", [train[:30], train[30:]])
    cfg = EvalConfig(tasks=["contamination"], progress=False)
    cfg.contamination.train, cfg.contamination.data = str(ds), str(MMLU_ANATOMY)
    rows = {r["metric"]: r for r in run_eval("unused-model", tmp_path / "res", cfg)["stats"]["results"]}
    short = sum(len(contamination.words(t)) < 13 for t in texts)
    assert rows["contaminated_items"]["value"] == len(planted)
    assert rows["too_short_items"]["value"] == short
    assert rows["contaminated_13gram"]["value"] == pytest.approx(len(planted) / (len(texts) - short))
    assert rows["train_documents"]["value"] == 60
    hit, _, _ = contamination.find_contaminated(texts, train, 13)
    assert hit == set(planted)
    hit12, _, _ = contamination.find_contaminated(texts, train, 12)
    assert near in hit12  # the 12-word plant is found at n=12


@pytest.mark.parametrize(
    "text,value",
    [
        ("So she makes 9 * 2 = $18.\n#### 18", 18.0),
        ("The answer is 1,234.", 1234.0),
        ("x = 3, then y = -4.5", -4.5),
        ("#### $1,000.00", 1000.0),
        ("no number", None),
        ("#### 7 apples; 9", 7.0),
    ],
)
def test_exact_match_extraction(text, value):
    assert exact_match.extract(text) == value


def test_degeneration_metrics_by_hand():
    ws = "a b c d a b c d a b".split()
    assert degeneration.repetition_rate(ws, 4) == pytest.approx(3 / 7)  # 7 4-grams, 3 repeat earlier ones
    assert degeneration.repetition_rate("a b c".split(), 4) == 0.0
    assert degeneration.distinct([["a", "b"], ["a", "c"]], 1) == pytest.approx(3 / 4)
    assert degeneration.distinct([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)


def test_sampling_matches_llmctl_generate(tmp_path):
    from llmctl.model.generate import generate

    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=64)
    lm = load_lm(ck)
    prompt = tokenizer().encode("Once upon a time")
    for temp, k, p in ((0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 20, 0.9)):
        ours = lm.generate(prompt, 20, temperature=temp, top_k=k, top_p=p, seed=7, stop_ids=())
        theirs = generate(lm.model, prompt, 20, temperature=temp, top_k=k or None, top_p=p, seed=7)
        assert ours == theirs


def test_generation_tasks_run_and_are_deterministic(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=96)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(
        "\n".join(
            json.dumps({"question": q, "answer": f"...\n#### {a}"})
            for q, a in [("What is 2+3?", 5), ("What is 10-4?", 6), ("Half of 8?", 4)]
        )
        + "\n"
    )
    docs = write_documents(tmp_path / "docs", [tinystories_docs(6)])
    results = []
    for bs in (1, 3):
        cfg = EvalConfig(tasks=["exact_match", "degeneration"], batch_size=bs, progress=False)
        cfg.exact_match.data, cfg.exact_match.max_new_tokens = str(gsm), 12
        cfg.degeneration.limit, cfg.degeneration.max_new_tokens = 4, 24
        cfg.degeneration.prompts, cfg.degeneration.prompt_words = str(docs), 8
        results.append(run_eval(ck, tmp_path / f"res{bs}", cfg)["stats"]["results"])
    assert results[0] == results[1]
    rows = {(r["task"], r["metric"]): r for r in results[0]}
    assert rows[("exact_match", "exact_match")]["n"] == 3
    # per-item output: a dataset of its own, beside (not inside) the results table
    items = Dataset.open(tmp_path / "res1" / "_samples" / "exact_match", stage="eval_samples")
    recs = list(items.iter_rows())
    assert [r["reference"] for r in recs] == [5.0, 6.0, 4.0]
    assert all(r["prompt"].startswith("Question: ") and r["exact_match"] in (0.0, 1.0) for r in recs)
    assert sum(r["exact_match"] for r in recs) / 3 == rows[("exact_match", "exact_match")]["value"]
    assert sum(r["new_tokens"] for r in recs) / 3 == rows[("exact_match", "mean_new_tokens")]["value"]
    import pyarrow.dataset as pads

    assert pads.dataset(tmp_path / "res1").to_table().num_rows == len(results[0])  # readers skip _samples/
    assert 0 <= rows[("degeneration", "distinct_1")]["value"] <= 1
    assert rows[("degeneration", "mean_words")]["value"] > 0


def test_hugging_face_directory_gives_the_same_numbers(tmp_path):
    from llmctl.export.hf import export_hf

    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=128)
    hf = export_hf(ck, tmp_path / "hf")
    lm_hf = load_lm(hf)
    assert type(lm_hf).__name__ == "HFLM"
    assert lm_hf.codec.encode("Once upon a time, Lily") == tokenizer().encode("Once upon a time, Lily")
    docs = write_documents(tmp_path / "docs", [tinystories_docs(8)])
    out = {}
    for name, model in (("llmctl", ck), ("hf", hf)):
        cfg = EvalConfig(tasks=["perplexity", "mc"], batch_size=2, progress=False)
        cfg.perplexity.data = str(docs)
        cfg.mc.data, cfg.mc.limit = str(MMLU_ANATOMY), 8
        out[name] = {
            (r["task"], r["metric"]): r["value"]
            for r in run_eval(model, tmp_path / f"res-{name}", cfg)["stats"]["results"]
        }
    assert out["hf"][("mc", "acc")] == out["llmctl"][("mc", "acc")]
    assert out["hf"][("mc", "acc_norm")] == out["llmctl"][("mc", "acc_norm")]
    for m in ("loss", "bits_per_byte"):
        assert out["hf"][("perplexity", m)] == pytest.approx(out["llmctl"][("perplexity", m)], abs=1e-5)
    a = lm_hf.generate(tokenizer().encode("Once"), 10, stop_ids=())
    b = load_lm(ck).generate(tokenizer().encode("Once"), 10, stop_ids=())
    assert a == b


@pytest.mark.slow
def test_cli_writes_results_dataset_and_prints_table(tmp_path):
    from llmctl.cli import app

    ck = tiny_checkpoint(tmp_path / "ck", tmp_path)
    docs = write_documents(tmp_path / "docs", [tinystories_docs(6)])
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(ck),
            "--task",
            "perplexity",
            "--task",
            "mc",
            "--ppl-data",
            str(docs),
            "--mc-data",
            str(MMLU_ANATOMY),
            "--limit",
            "5",
            "--set",
            "perplexity.limit=3",
            "-b",
            "2",
            "-o",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [
        [c.strip() for c in ln.replace("┃", "│").split("│")[1:-1]]
        for ln in res.output.splitlines()
        if ln.replace("┃", "│").count("│") == 6
    ]
    assert ["task", "metric", "value", "stderr", "n"] == rows[0], res.output  # a rich table, as every stage prints
    by = {(r[0], r[1]): r for r in rows[1:]}
    assert ("perplexity", "bits_per_byte") in by and ("mc", "acc") in by
    assert by[("perplexity", "documents")][2] == "3"  # a count, not 3.0000
    ds = Dataset.open(tmp_path / "r", stage="eval", columns=["task", "metric", "value", "stderr", "n"])
    n = {(r["task"], r["metric"]): r["n"] for r in ds.iter_rows()}
    assert n[("mc", "acc")] == 5 and n[("perplexity", "documents")] == 3  # --set TASK.limit beats --limit
    # perplexity: loss, perplexity, bits_per_byte, byte_perplexity, word_perplexity, documents;
    # mc: acc, acc_norm, chance; core: centered_acc
    assert ds.num_rows == 10
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmctl",
            "eval",
            str(ck),
            "--task",
            "mc",
            "--mc-data",
            "/nope.csv",
            "-o",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip().endswith("/nope.csv: no such multiple-choice file or directory")
    assert not (tmp_path / "x").exists()  # nothing half-written
