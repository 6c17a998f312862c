"""Removed documents live in the dataset OUT.rejected beside OUT, so that a reader pointed at OUT
(pandas, pyarrow, duckdb, Hugging Face datasets) reads the kept documents and nothing else.

A `rejected/` folder inside OUT was read by pandas and pyarrow as 586 rows for 529 kept documents
(issue 22); a `_rejected/` folder is still read by duckdb's `**` glob and by `datasets`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pytest

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

CRAWL = Path("examples/crawl/crawl-00000.warc.gz")  # a real crawl file (../shared/data/crawl)
TEXT = Path("examples/text/tinystories.jsonl.gz")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("layout") / "docs"
    run_filter([str(CRAWL), str(TEXT)], d, FilterConfig(workers=2), progress=False)
    return d


def _ids(rows) -> list[str]:
    return sorted(rows)


def readers(path: Path, cache: Path) -> dict[str, list[str]]:
    """The document ids each reader finds in `path`, used the way its docs say to read a folder."""
    import datasets

    con = duckdb.connect()
    return {
        "pandas": _ids(pd.read_parquet(path)["id"]),
        "pyarrow": _ids(pads.dataset(path, format="parquet").to_table(columns=["id"]).column("id").to_pylist()),
        "duckdb": _ids(r[0] for r in con.execute(f"SELECT id FROM read_parquet('{path}/**/*.parquet')").fetchall()),
        "duckdb dir": _ids(r[0] for r in con.execute(f"SELECT id FROM read_parquet('{path}')").fetchall()),
        "datasets": _ids(datasets.load_dataset(str(path), split="train", cache_dir=str(cache))["id"]),
    }


def test_every_reader_sees_the_kept_documents_only(out, tmp_path):
    m = Dataset.open(out).manifest
    funnel = {r["row"]: r["docs"] for r in m["stats"]["funnel"]}
    kept = _ids(r["id"] for r in Dataset.open(out).iter_rows())
    assert len(kept) == funnel["kept"] == m["num_rows"] > 0
    got = readers(out, tmp_path / "hf")
    assert got == {name: kept for name in got}

    rejected = Path(f"{out}.rejected")
    rej = Dataset.open(rejected, stage="filter.rejected")
    n_rejected = sum(v for k, v in funnel.items() if k.startswith("rejected."))
    assert rej.num_rows == n_rejected > 0 and not set(kept) & {r["id"] for r in rej.iter_rows()}
    got = readers(rejected, tmp_path / "hf2")
    assert all(len(ids) == n_rejected for ids in got.values()), {k: len(v) for k, v in got.items()}
    reasons = {k.removeprefix("rejected."): v for k, v in funnel.items() if k.startswith("rejected.")}
    assert rej.manifest["stats"]["reasons"] == reasons  # dedup reasons included
    assert any(k.startswith("dedup.") for k in reasons)
    dups = [r for r in rej.iter_rows() if r["reason"].startswith("dedup.")]
    assert dups and all(d["detail"] in kept for d in dups)  # a duplicate names the kept document it repeats
    assert m["stats"]["rejected"] == {"dataset": "docs.rejected", "documents": n_rejected}
    assert not (out / "rejected").exists() and not (out / "_work").exists()


def test_rejected_dataset_follows_its_output(out, tmp_path):
    """Re-run: nothing to do; --overwrite with other inputs: OUT.rejected is replaced, not mixed;
    --no-rejected on a fresh OUT: no stale OUT.rejected stays; a foreign folder: refused, nothing written."""
    d = tmp_path / "docs"
    shutil.copytree(out, d)
    shutil.copytree(f"{out}.rejected", f"{d}.rejected")
    before = json.loads(Path(f"{d}.rejected/_manifest.json").read_text())
    run_filter([str(CRAWL), str(TEXT)], d, FilterConfig(workers=2), progress=False)
    assert json.loads(Path(f"{d}.rejected/_manifest.json").read_text()) == before

    m = run_filter([str(CRAWL)], d, FilterConfig(workers=1), overwrite=True, progress=False)
    rej = Dataset.open(f"{d}.rejected", stage="filter.rejected")
    assert sorted(p.name for p in Path(f"{d}.rejected").iterdir()) == ["_manifest.json", "part-00000.parquet"]
    assert rej.num_rows == sum(r["docs"] for r in m["stats"]["funnel"] if r["row"].startswith("rejected."))

    run_filter([str(CRAWL)], d, FilterConfig(workers=1, write_rejected=False), overwrite=True, progress=False)
    assert not Path(f"{d}.rejected").exists()

    foreign = tmp_path / "mine"
    Path(f"{foreign}.rejected").mkdir()
    (Path(f"{foreign}.rejected") / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no llmctl output"):
        run_filter([str(CRAWL)], foreign, FilterConfig(workers=1), progress=False)
    assert not foreign.exists() and (Path(f"{foreign}.rejected") / "notes.txt").read_text() == "mine"
