"""`llmctl data import --format docs`: text, JSONL and Parquet files become a documents dataset that
`tokenize` reads; bad records are counted and skipped; an input with no document is an error."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmctl.data.chat_data import import_data
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

DATA = Path(__file__).resolve().parents[1] / "fixtures"
LLMCTL = [sys.executable, "-m", "llmctl"]


def texts(path) -> list[str]:
    return [r["text"] for r in Dataset.open(path).iter_rows(["text"])]


def test_text_files_split_on_endoftext_paragraphs_or_whole(tmp_path):
    m = import_data(DATA / "tinystories_sample_endoftext.txt", tmp_path / "eot", "docs")
    stories = texts(tmp_path / "eot")
    assert m["stage"] == "documents" and len(stories) == 5 and all("<|endoftext|>" not in t for t in stories)
    assert stories[0].startswith("Once upon a time")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "a.txt").write_text("Chapter one.\n\nIt was dark.\n\n\nThe end.\n")
    with gzip.open(tmp_path / "book" / "b.txt.gz", "wt") as f:
        f.write("Another book, one document.")
    import_data(tmp_path / "book", tmp_path / "whole", "docs")
    assert texts(tmp_path / "whole") == ["Chapter one.\n\nIt was dark.\n\n\nThe end.", "Another book, one document."]
    import_data(tmp_path / "book" / "a.txt", tmp_path / "paras", "docs", doc_options={"separator": "blank-line"})
    assert texts(tmp_path / "paras") == ["Chapter one.", "It was dark.", "The end."]


def test_jsonl_and_parquet_fields_and_bad_records(tmp_path):
    lines = [
        json.dumps({"question": "2+2?", "answer": "4"}).encode(),
        b"\xff\xfe not utf-8",
        json.dumps({"question": "1+1?"}).encode(),
        b"{not json",
        json.dumps({"question": "3+3?", "answer": "6"}).encode(),
    ]
    (tmp_path / "qa.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    m = import_data(tmp_path / "qa.jsonl", tmp_path / "qa", "docs", doc_options={"text_field": "question,answer"})
    assert texts(tmp_path / "qa") == ["2+2?\n\n4", "3+3?\n\n6"]
    assert m["stats"]["skipped"] == {"invalid UTF-8": 1, "no text": 1, "not JSON": 1} and m["stats"]["read"] == 5
    pq.write_table(pa.table({"id": ["a", "b", "c"], "content": ["def f(): pass", "", None]}), tmp_path / "code.parquet")
    m = import_data(tmp_path / "code.parquet", tmp_path / "code", "docs")
    rows = list(Dataset.open(tmp_path / "code").iter_rows())
    assert [(r["id"], r["text"]) for r in rows] == [("a", "def f(): pass")]
    assert m["stats"]["skipped"] == {"empty text": 1, "no text": 1}
    ids = [r["id"] for r in Dataset.open(tmp_path / "qa").iter_rows(["id"])]
    import_data(tmp_path / "qa.jsonl", tmp_path / "qa2", "docs", doc_options={"text_field": "question,answer"})
    assert ids == [r["id"] for r in Dataset.open(tmp_path / "qa2").iter_rows(["id"])]  # stable ids


def test_no_document_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text(json.dumps({"title": "no text here"}) + "\n")
    with pytest.raises(UsageError, match="no 'text' or 'content' field"):
        import_data(tmp_path / "empty.jsonl", tmp_path / "x", "docs")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    r = subprocess.run(
        LLMCTL + ["data", "import", str(tmp_path / "blank.txt"), "-o", str(tmp_path / "y"), "-f", "docs"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no document to import" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()


def test_a_large_text_file_without_separator_is_one_document_with_a_notice(tmp_path, capsys):
    story = "Once upon a time there was a cat. It liked milk.\n\n" * 3000  # 150k characters, blank lines
    (tmp_path / "big.txt").write_text(story)
    (tmp_path / "small.txt").write_text("A short note.\n\nAnother line.")
    import_data(tmp_path / "big.txt", tmp_path / "one", "docs")
    err = capsys.readouterr().err
    assert Dataset.open(tmp_path / "one").num_rows == 1 and "--separator blank-line" in err
    import_data(tmp_path / "small.txt", tmp_path / "small", "docs")  # small: no notice
    import_data(
        tmp_path / "big.txt", tmp_path / "split", "docs", doc_options={"separator": "blank-line"}
    )  # split: no notice
    assert capsys.readouterr().err == ""
    assert Dataset.open(tmp_path / "split").num_rows == 3000
