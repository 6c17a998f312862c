"""The tokenize stage: sampling and training into a tokenizer dir, encoding documents to token shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from tokenize_helpers import tinystories_docs, write_documents
from typer.testing import CliRunner

import llmctl.data.tokenize as T
from llmctl.cli import app
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset
from llmctl.tokenizer.spm import Tokenizer

DOCS = tinystories_docs()
SHARDS = [DOCS[:400], DOCS[400:500], DOCS[500:1200]]  # uneven shards: one holds far less text


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> Path:
    return write_documents(tmp_path_factory.mktemp("docs") / "docs", SHARDS)


@pytest.fixture(scope="module")
def tok_dir(docs_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok"
    T.run_train([str(docs_dir)], out, T.TokenizerTrainConfig(vocab_size=600, sample_bytes=150_000))
    return out


def _bytes(texts):
    return sum(len(t.encode()) for t in texts)


# ---------------------------------------------------------------- sampling and training


def test_quotas_split_evenly_and_give_unused_share_away():
    assert T._quotas([100, 100, 100], 150) == [50, 50, 50]
    assert T._quotas([10, 100, 100], 150) == [10, 70, 70]
    assert T._quotas([10, 20, 30], 1000) == [10, 20, 30]
    assert sum(T._quotas([7, 500, 900, 3], 1001)) == 1001


def test_sample_is_even_across_shards_seeded_and_bounded(docs_dir):
    ds = Dataset.open(docs_dir)
    texts, info = T.sample_documents([ds], 150_000, seed=0)
    small = _bytes(SHARDS[1])
    assert small < 50_000  # the small shard gives its unused share to the others
    per_shard = [sum(t in set(s) for t in texts) for s in SHARDS]
    assert per_shard[1] == len(SHARDS[1])
    got = [_bytes([t for t in texts if t in set(s)]) for s in SHARDS]
    share = (150_000 - small) / 2
    for g in (got[0], got[2]):  # within one document of the share
        assert share <= g <= share + max(map(len, DOCS)) * 4
    assert info["bytes"] == _bytes(texts) and info["input_shards"] == 3
    again, _ = T.sample_documents([ds], 150_000, seed=0)
    other, _ = T.sample_documents([ds], 150_000, seed=1)
    assert again == texts and other != texts


def test_train_writes_a_loadable_dir_with_lineage(docs_dir, tok_dir):
    m = json.loads((tok_dir / "_manifest.json").read_text())
    assert m["stage"] == "tokenizer" and m["inputs"][0]["fingerprint"] == Dataset.open(docs_dir).fingerprint
    assert m["stats"]["vocab_size"] == 600 and m["stats"]["sample"]["bytes"] >= 150_000
    tok = Tokenizer.load(tok_dir)
    assert tok.fingerprint == m["fingerprint"] and tok.vocab_size == 600
    for name in ("tokenizer.model", "llmctl_tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / name).is_file()
    assert not list(tok_dir.parent.glob(".tok.tmp-*"))


def test_train_rerun_is_a_no_op_and_a_changed_config_refuses(docs_dir, tok_dir):
    cfg = T.TokenizerTrainConfig(vocab_size=600, sample_bytes=150_000, workers=1)  # workers do not matter
    before = (tok_dir / "_manifest.json").read_text()
    assert T.run_train([str(docs_dir)], tok_dir, cfg)["timings"] == json.loads(before)["timings"]
    with pytest.raises(UsageError, match="--overwrite"):
        T.run_train([str(docs_dir)], tok_dir, T.TokenizerTrainConfig(vocab_size=700, sample_bytes=150_000))


def test_train_overwrite_and_errors(docs_dir, tmp_path):
    out = tmp_path / "tok"
    T.run_train([str(docs_dir)], out, T.TokenizerTrainConfig(vocab_size=600, sample_bytes=50_000))
    m = T.run_train([str(docs_dir)], out, T.TokenizerTrainConfig(vocab_size=650, sample_bytes=50_000), overwrite=True)
    assert Tokenizer.load(out).vocab_size == 650 == m["stats"]["vocab_size"]
    no_text = write_documents(
        tmp_path / "notext", [["a"]], schema=pa.schema([("id", pa.string()), ("body", pa.string())])
    )
    with pytest.raises(UsageError, match="no column 'text'"):
        T.run_train([str(no_text)], tmp_path / "t2")
    with pytest.raises(UsageError, match="not an llmctl dataset"):
        T.run_train([str(tmp_path)], tmp_path / "t3")


# ---------------------------------------------------------------- encoding


def test_encode_matches_an_independent_encoding(docs_dir, tok_dir, tmp_path):
    m = T.run_encode(
        docs_dir, tok_dir, tmp_path / "tokens", T.EncodeConfig(val_fraction=0.2, workers=1), progress=False
    )
    tok = Tokenizer.load(tok_dir)
    ds = Dataset.open(tmp_path / "tokens", stage="tokens")
    assert len(ds.shards) == 3 and ds.num_rows == len(DOCS[:1200])
    assert ds.schema.field("input_ids").type == pa.list_(pa.int32())
    rows = list(ds.iter_rows())
    expect_ids = [f"doc-{k}-{j}" for k, s in enumerate(SHARDS) for j in range(len(s))]
    assert [r["id"] for r in rows] == expect_ids
    texts = [t for s in SHARDS for t in s]
    for r, text in zip(rows, texts):
        assert r["input_ids"] == tok.encode(text) + [tok.eos_id]
        assert r["split"] == T.split_of(r["id"], 0.2, 0)
    val = [r for r in rows if r["split"] == "val"]
    assert 0.15 < len(val) / len(rows) < 0.25
    st = m["stats"]
    assert st["val"]["documents"] == len(val) and st["documents"] == len(rows)
    assert st["val"]["tokens"] == sum(len(r["input_ids"]) for r in val)
    assert st["tokens"] == sum(len(r["input_ids"]) for r in rows)
    assert st["bytes"] == _bytes(texts)
    tr = st["train"]
    assert tr["bytes_per_token"] == round(tr["bytes"] / (tr["tokens"] - tr["documents"]), 4)
    assert [i["stage"] for i in m["inputs"]] == ["filter", "tokenizer"]


def test_split_is_deterministic_and_seeded():
    ids = [f"doc-{i}" for i in range(2000)]
    a = [T.split_of(i, 0.1, 0) for i in ids]
    assert a == [T.split_of(i, 0.1, 0) for i in ids] and 150 < a.count("val") < 250
    assert a != [T.split_of(i, 0.1, 1) for i in ids]
    assert all(T.split_of(i, 0.0) == "train" for i in ids)


def test_encode_output_does_not_depend_on_workers(docs_dir, tok_dir, tmp_path):
    fps = [
        T.run_encode(docs_dir, tok_dir, tmp_path / f"w{w}", T.EncodeConfig(workers=w), progress=False)["fingerprint"]
        for w in (1, 2, 5)
    ]
    assert fps[0] == fps[1] == fps[2]


def test_encode_resumes_after_a_crash(docs_dir, tok_dir, tmp_path, monkeypatch):
    full = T.run_encode(docs_dir, tok_dir, tmp_path / "full", T.EncodeConfig(workers=1), progress=False)
    real = T.encode_task

    def crash_on_third(task, report):
        if task.index == 2:
            raise KeyboardInterrupt
        return real(task, report)

    monkeypatch.setattr(T, "encode_task", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        T.run_encode(docs_dir, tok_dir, tmp_path / "out", T.EncodeConfig(workers=1), progress=False)
    assert not (tmp_path / "out" / "_manifest.json").exists()
    with pytest.raises(UsageError, match="not an llmctl dataset"):
        Dataset.open(tmp_path / "out")
    monkeypatch.setattr(T, "encode_task", real)
    m = T.run_encode(docs_dir, tok_dir, tmp_path / "out", T.EncodeConfig(workers=1), progress=False)
    assert m["timings"]["resumed_tasks"] == 2
    assert m["fingerprint"] == full["fingerprint"] and m["stats"] == full["stats"]
    with pytest.raises(UsageError, match="--overwrite"):
        T.run_encode(docs_dir, tok_dir, tmp_path / "out", T.EncodeConfig(val_fraction=0.5), progress=False)


def test_encode_null_text_and_missing_id(tok_dir, tmp_path):
    schema = pa.schema([("text", pa.string())])
    d = write_documents(tmp_path / "d", [["One day.", None, "", "Lily ran."]], stage="import", schema=schema)
    m = T.run_encode(d, tok_dir, tmp_path / "t", T.EncodeConfig(val_fraction=0.5), progress=False)
    rows = list(Dataset.open(tmp_path / "t").iter_rows())
    tok = Tokenizer.load(tok_dir)
    assert [r["input_ids"] for r in rows] == [tok.encode("One day.") + [2], [2], tok.encode("Lily ran.") + [2]]
    assert len({r["id"] for r in rows}) == 3 and m["stats"]["skipped_null_text"] == 1


def test_encode_progress_bar_ends_at_its_total(tok_dir, tmp_path, monkeypatch):
    """The bar counts documents (null texts included), so it ends at 100% when every document is
    done (measured in estimated text bytes it ended at 99.4%)."""
    from llmctl.utils import progress as P

    bars: list[P.StageProgress] = []

    class Recorded(P.StageProgress):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            bars.append(self)

    monkeypatch.setattr(T, "StageProgress", Recorded)
    schema = pa.schema([("text", pa.string())])
    d = write_documents(tmp_path / "d", [DOCS[:30] + [None], DOCS[30:45]], stage="import", schema=schema)
    T.run_encode(d, tok_dir, tmp_path / "t", T.EncodeConfig(val_fraction=0.5, workers=2), progress=False)
    (bar,) = bars
    task = bar._progress.tasks[0]
    assert bar.unit == "docs" and task.total == task.completed == 46 and bar.counts["bytes"] == _bytes(DOCS[:45])


def test_encode_errors(docs_dir, tok_dir, tmp_path):
    no_text = write_documents(tmp_path / "nt", [["x"]], schema=pa.schema([("id", pa.string()), ("body", pa.string())]))
    with pytest.raises(UsageError, match="no column 'text'"):
        T.run_encode(no_text, tok_dir, tmp_path / "o1")
    with pytest.raises(UsageError, match="no such tokenizer"):
        T.run_encode(docs_dir, tmp_path / "missing", tmp_path / "o2")
    with pytest.raises(UsageError, match="not an llmctl tokenizer"):
        T.run_encode(docs_dir, docs_dir, tmp_path / "o3")
    with pytest.raises(UsageError, match="val-fraction"):
        T.run_encode(docs_dir, tok_dir, tmp_path / "o4", T.EncodeConfig(val_fraction=1.5))
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "o4"))


# ---------------------------------------------------------------- CLI


def test_cli_train_encode_inspect(docs_dir, tmp_path):
    r = CliRunner()
    res = r.invoke(
        app,
        [
            "tokenize",
            "train",
            str(docs_dir),
            "-o",
            str(tmp_path / "tok"),
            "--vocab-size",
            "600",
            "--sample-bytes",
            "100000",
            "--set",
            "seed=3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "600-token" in res.output
    assert json.loads((tmp_path / "tok" / "_manifest.json").read_text())["config"]["seed"] == 3
    res = r.invoke(
        app,
        [
            "tokenize",
            "encode",
            str(docs_dir),
            "-t",
            str(tmp_path / "tok"),
            "-o",
            str(tmp_path / "t"),
            "--val-fraction",
            "0.1",
            "-w",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "val" in res.output and "bytes/token" in res.output
    assert Dataset.open(tmp_path / "t").manifest["config"]["val_fraction"] == 0.1
    res = r.invoke(app, ["tokenize", "inspect", str(tmp_path / "tok"), "Lily [b]saw 42 <|user|>"])
    assert res.exit_code == 0, res.output
    tok = Tokenizer.load(tmp_path / "tok")
    assert "ids: " + " ".join(map(str, tok.encode("Lily [b]saw 42 <|user|>"))) in res.output.replace("\n", " ")
    assert "round trip ok" in res.output


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmctl",
            "tokenize",
            "encode",
            str(tmp_path),
            "-t",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("llmctl: error:") and p.stderr.count("\n") == 1
