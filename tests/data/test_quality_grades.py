"""Grade models (FineWeb-Edu's recipe): `quality annotate` with a judge over HTTP on 127.0.0.1,
`quality train --target grade --head classes|ridge`, and `filter --quality-threshold 3` keeping
the pages whose predicted grade is at least 3. The judge is benchmarks/quality_grades.py's keyword
heuristic (not a language model), served on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import tiny_checkpoint
from sklearn.linear_model import Ridge
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.data.dedup.base import normalize_text
from llmctl.data.quality import GRADE_LABEL, _ridge, load_model
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

pytestmark = pytest.mark.slow  # annotates 576 documents and trains two fastText models

REPO = Path(__file__).parents[2]
FIXTURES = [str(REPO / "tests" / "fixtures" / f"quality_{s}.jsonl.gz") for s in ("hq", "lq")]


def _judge_module():
    spec = importlib.util.spec_from_file_location("quality_grades", REPO / "benchmarks" / "quality_grades.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.output


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The README's chain on the quality fixtures: annotate (HTTP judge) -> train (classes, ridge)."""
    tmp = tmp_path_factory.mktemp("grades")
    judge = _judge_module()
    server, url = judge.serve()
    try:
        out = cli("quality", "annotate", *FIXTURES, "-o", str(tmp / "grades"), "--judge-url", url,
                  "--judge", "heuristic", "--concurrency", "8")  # fmt: skip
    finally:
        server.shutdown()
    for head in ("classes", "ridge"):
        cli("quality", "train", str(tmp / "grades"), "--target", "grade", "--threshold", "3", "--head", head,
            "-o", str(tmp / head))  # fmt: skip
    return tmp, out, judge


def test_annotate_grades_match_the_judge_and_count_unparsed(chain):
    tmp, out, judge = chain
    rows = list(Dataset.open(tmp / "grades").iter_rows())
    assert len(rows) == 576
    unparsed = [r for r in rows if r["grade"] is None]
    assert unparsed and all(r["answer"] == "I cannot grade this page." for r in unparsed)
    assert all(r["grade"] == judge.heuristic_grade(r["text"][:3000]) for r in rows if r["grade"] is not None)
    assert f"{len(unparsed)} answers without a grade" in out


@pytest.mark.parametrize("head", ["classes", "ridge"])
def test_grade_heads_agree_with_held_out_grades(chain, head):
    s = json.loads((chain[0] / head / "_manifest.json").read_text())["stats"]
    assert s["grade_head"]["head"] == head and s["grade_head"]["threshold"] == 3
    h = s["heldout"]
    # Trivial floors: predicting the majority side gives accuracy ~0.55 and Spearman 0.
    assert h["accuracy"] >= 0.7 and h["spearman"] >= 0.5, h


def test_filter_keeps_predicted_grade_at_least_3(chain, tmp_path):
    tmp = chain[0]
    model = str(tmp / "classes")
    cli("filter", FIXTURES[0], "-o", str(tmp_path / "edu"), "--no-langid", "--no-c4", "--no-gopher", "--no-pii",
        "--no-dedup", "--quality-model", model, "--quality-threshold", "3")  # fmt: skip
    kept = {r["id"]: r for r in Dataset.open(tmp_path / "edu").iter_rows()}
    rejected = {r["id"]: r for r in Dataset.open(tmp_path / "edu.rejected").iter_rows()}
    assert kept and rejected
    # The expected grade, computed here from fastText's own probabilities.
    ft = load_model(model)
    for rows, keep in ((kept, True), (rejected, False)):
        for r in rows.values():
            labels, probs = ft.predict(normalize_text(r["text"])[:20_000], k=-1)
            grade = sum(int(lab[len(GRADE_LABEL) :]) * float(p) for lab, p in zip(labels, probs))
            assert np.isclose(r["quality_score"], grade, atol=1e-4)
            assert (r["quality_score"] >= 3) == keep
    assert all(r["reason"] == "quality.low_score" for r in rejected.values())
    # no --quality-threshold: a grade model's default is the grade it was trained at
    cli("filter", FIXTURES[0], "-o", str(tmp_path / "edu2"), "--no-langid", "--no-c4", "--no-gopher", "--no-pii",
        "--no-dedup", "--quality-model", model)  # fmt: skip
    assert {r["id"] for r in Dataset.open(tmp_path / "edu2").iter_rows()} == set(kept)


def test_ridge_head_is_sklearns_ridge(chain):
    tmp = chain[0]
    m = json.loads((tmp / "ridge" / "_manifest.json").read_text())
    ft = load_model(tmp / "ridge")
    # The training split's texts are not stored; refit on all graded texts and compare the fit itself.
    rows = [r for r in Dataset.open(tmp / "grades").iter_rows() if r["grade"] is not None]
    texts = list(dict.fromkeys(normalize_text(r["text"])[:20_000] for r in rows))
    grade = {normalize_text(r["text"])[:20_000]: r["grade"] for r in rows}
    mine = _ridge(ft, texts, [grade[t] for t in texts], 1.0)
    x = np.stack([ft.get_sentence_vector(t) for t in texts])
    ref = Ridge(alpha=1.0).fit(x, [grade[t] for t in texts])
    assert np.allclose(mine["weights"], ref.coef_, atol=1e-5) and np.isclose(mine["bias"], ref.intercept_, atol=1e-5)
    assert len(m["stats"]["grade_head"]["weights"]) == x.shape[1]


def test_pareto_with_a_grade_model_is_one_line(chain, tmp_path):
    r = CliRunner().invoke(app, ["filter", FIXTURES[0], "-o", str(tmp_path / "x"), "--quality-model",
                                 str(chain[0] / "classes"), "--quality-sampling", "pareto"])  # fmt: skip
    assert isinstance(r.exception, UsageError) and "grade model" in str(r.exception)
    assert not (tmp_path / "x").exists()


def test_readme_chain_runs_as_written(in_repo_copy, tmp_path_factory):
    """README.md's annotate -> train -> filter block, each command as written, on examples/crawl
    (the first file of ../shared/data/crawl) with the heuristic judge on a free port and, for the
    in-process line, a tiny llmctl checkpoint at runs/sft."""
    md = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", md, re.S) if "quality annotate out/pages" in b)
    lines = [ln for ln in block.splitlines() if ln.startswith("llmctl ")]
    assert [ln.split()[1:3] for ln in lines] == [
        ["filter", "../shared/data/crawl"],
        ["quality", "annotate"],
        ["quality", "train"],
        ["filter", "../shared/data/crawl"],
        ["quality", "annotate"],
    ]
    tiny_checkpoint(in_repo_copy / "runs" / "sft", tmp_path_factory.mktemp("tok"))
    server, url = _judge_module().serve()
    try:
        for line in lines:
            line = line.replace("../shared/data/crawl", "examples/crawl").replace("http://127.0.0.1:8001/v1", url)
            args = shlex.split(line, comments=True)[1:]
            cli(*args, *(["--set", "max_tokens=4"] if "--judge" in args and "runs/sft" in args else []))
    finally:
        server.shutdown()
    s = json.loads((in_repo_copy / "out" / "edu" / "_manifest.json").read_text())["stats"]
    assert s["grade_head"]["head"] == "classes" and "spearman" in s["heldout"]
    kept = list(Dataset.open(in_repo_copy / "out" / "docs_edu").iter_rows())
    low = [
        r
        for r in Dataset.open(in_repo_copy / "out" / "docs_edu.rejected").iter_rows()
        if r["reason"] == "quality.low_score"
    ]
    assert low and all(r["quality_score"] < 3 for r in low) and all(r["quality_score"] >= 3 for r in kept)
    local = Dataset.open(in_repo_copy / "out" / "grades_local")
    assert local.manifest["stats"]["sampled"] == local.manifest["num_rows"] > 0
