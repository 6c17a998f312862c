"""`llmctl quality annotate`: a judge served over HTTP on 127.0.0.1 grades documents; grades are
parsed from its answers, unparsed answers counted, and a killed run resumes without asking again."""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.data import annotate as A
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

FIXTURES = Path(__file__).parents[1] / "fixtures"

DOCS = {  # id -> (text, the judge's answer)
    "tut": ("A tutorial on fractions, step by step.", "Clear and well organised.\nScore: 4"),
    "spam": ("Buy cheap pills now spam spam.", "Nothing to learn here. **Score: 0**"),
    "bare": ("The water cycle, in brief.", "3"),
    "odd": ("Lorem ipsum dolor sit amet.", "I would rather not say; maybe 7/10?"),
    "late": ("A history of the printing press.", "Grade: 2, because it is short. Score: 3"),
}


class Judge:
    """An OpenAI-compatible chat server whose answer depends on the document in the prompt."""

    def __init__(self, fail: set[str] = frozenset()):
        self.asked: Counter[str] = Counter()
        self.fail = set(fail)
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions" and body["temperature"] == 0
                prompt = body["messages"][0]["content"]
                doc = next(i for i, (t, _) in DOCS.items() if t in prompt)
                judge.asked[doc] += 1
                if doc in judge.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": DOCS[doc][1]}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def docs(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, (t, _) in DOCS.items()))
    return str(p)


def config(url: str, **kw) -> A.AnnotateConfig:
    return A.AnnotateConfig(**{"judge": "tiny-judge", "judge_url": url, "retries": 0, "concurrency": 2, **kw})


def test_parse_grade():
    assert [A.parse_grade(a) for _, a in DOCS.values()] == [4, 0, 3, None, 3]
    assert A.parse_grade("score = 5.") == 5 and A.parse_grade("Score: 4.5") is None and A.parse_grade("") is None


def test_grades_land_in_a_dataset_with_id_answer_and_grade(tmp_path, docs):
    judge = Judge()
    try:
        r = CliRunner().invoke(
            app, ["quality", "annotate", docs, "-o", str(tmp_path / "g"), "--judge-url", judge.url, "--judge", "j"]
        )
    finally:
        judge.close()
    assert r.exit_code == 0, r.output
    assert "graded 4 of 5 documents" in r.output and "1 answers without a grade" in r.output
    ds = Dataset.open(tmp_path / "g", stage="quality.annotate")
    rows = {x["id"]: x for x in ds.iter_rows()}
    assert {i: (x["grade"], x["answer"]) for i, x in rows.items()} == {
        i: (A.parse_grade(a), a) for i, (_, a) in DOCS.items()
    }
    assert ds.manifest["stats"]["grades"] == {"0": 1, "1": 0, "2": 0, "3": 2, "4": 1, "5": 0}
    assert set(judge.asked.values()) == {1}
    assert any(i.get("stage") == "annotate.prompt" for i in ds.manifest["inputs"])


def test_a_killed_run_resumes_without_asking_again(tmp_path, docs, monkeypatch):
    judge = Judge()
    real = A.Judge.ask
    calls = []

    def dying(self, text):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed after three answers
        calls.append(text)
        return real(self, text)

    try:
        monkeypatch.setattr(A.Judge, "ask", dying)
        with pytest.raises(KeyboardInterrupt):
            A.annotate([docs], tmp_path / "g", config(judge.url, concurrency=1))
        assert not (tmp_path / "g" / "_manifest.json").exists() and sum(judge.asked.values()) == 3
        monkeypatch.setattr(A.Judge, "ask", real)
        m = A.annotate([docs], tmp_path / "g", config(judge.url))
    finally:
        judge.close()
    assert judge.asked == Counter(dict.fromkeys(DOCS, 1))  # every document asked once, over both runs
    assert m["stats"]["resumed_answers"] == 3 and m["num_rows"] == 5


def test_a_judge_that_fails_or_is_not_there_is_one_line(tmp_path, docs):
    judge = Judge(fail={"spam"})
    try:
        with pytest.raises(UsageError, match=r"1 of 5 requests .* failed \(HTTPError.*run the same command again"):
            A.annotate([docs], tmp_path / "g", config(judge.url))
        judge.fail.clear()
        m = A.annotate([docs], tmp_path / "g", config(judge.url))
    finally:
        judge.close()
    assert m["num_rows"] == 5 and judge.asked["spam"] == 2 and judge.asked["tut"] == 1
    with pytest.raises(UsageError, match="requests .* failed"):
        A.annotate([docs], tmp_path / "h", config("http://127.0.0.1:9/v1"))
    bad = tmp_path / "prompt.txt"
    bad.write_text("Grade this page.")
    with pytest.raises(UsageError, match="no {text} placeholder"):
        A.annotate([docs], tmp_path / "i", config("http://x", prompt=str(bad)))
    assert not (tmp_path / "i").exists()


def test_sample_is_seeded_and_does_not_depend_on_input_order():
    docs = [(f"d{i}", "t") for i in range(50)]
    a = A.sample(docs, 10, seed=1)
    assert a == A.sample(list(reversed(docs)), 10, seed=1) and len(a) == 10
    assert a != A.sample(docs, 10, seed=2)
    assert re.fullmatch(r"d\d+", a[0][0])


def test_output_rows_are_readable_with_pyarrow(tmp_path, docs):
    judge = Judge()
    try:
        A.annotate([docs], tmp_path / "g", config(judge.url, sample=2))
    finally:
        judge.close()
    t = pq.read_table(tmp_path / "g")
    assert t.num_rows == 2 and t.schema.names == ["id", "text", "grade", "answer", "judge"]


@pytest.mark.slow  # 576 documents graded over HTTP, then fastText
def test_quality_train_on_grades_agrees_with_them(tmp_path):
    """The FineWeb-Edu chain on the quality fixtures: a judge grades reference pages 3-5 and crawl
    pages 0-2; a classifier trained at --threshold 3 recovers that on its held-out split."""
    rows = []
    for side in ("hq", "lq"):
        with gzip.open(FIXTURES / f"quality_{side}.jsonl.gz", "rt", encoding="utf-8") as f:
            rows += [dict(json.loads(line), side=side) for line in f]
    graded = {r["text"][:200]: (3 if r["side"] == "hq" else 0) + i % 3 for i, r in enumerate(rows)}
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))
    answers = {t: f"Score: {g}" for t, g in graded.items()}
    saved = dict(DOCS)
    DOCS.clear()
    DOCS.update({k: (k, a) for k, a in answers.items()})
    judge = Judge()
    try:
        m = A.annotate([str(src)], tmp_path / "grades", config(judge.url, concurrency=4))
    finally:
        judge.close()
        DOCS.clear()
        DOCS.update(saved)
    assert m["stats"]["graded"] == len(rows)
    r = CliRunner().invoke(
        app, ["quality", "train", str(tmp_path / "grades"), "--threshold", "3", "-o", str(tmp_path / "model")]
    )
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "model" / "_manifest.json").read_text())["stats"]
    n_pos = sum(g >= 3 for g in graded.values())
    assert s["train_docs"]["hq"] + s["heldout_docs"]["hq"] <= n_pos  # the graded >= 3 side, less duplicates
    assert (
        s["train_docs"]["hq"] + s["heldout_docs"]["hq"] + s["train_docs"]["lq"] + s["heldout_docs"]["lq"]
        == len(rows) - s["duplicates_dropped"]
    )
    h = s["heldout"]
    assert h["accuracy"] >= 0.9 and h["spearman"] > 0.6, h  # measured: 0.973 and 0.761 (grades 3-5 vs 0-2)
    assert f"Spearman {h['spearman']}" in r.output
