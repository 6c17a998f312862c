"""The `decontaminate` step: documents holding a bundled MMLU question (verbatim, re-wrapped, with
changed case and punctuation) are dropped, one sharing only 12 consecutive words is kept, and
`eval --task contamination` finds nothing in what the filter kept."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.ngrams import words
from llmctl.data.steps.decont import DecontConfig, DecontFilter
from llmctl.errors import UsageError
from llmctl.eval.tasks import contamination
from llmctl.store.dataset import Dataset

MMLU = Path("examples/eval/mmlu")
GSM8K = Path("examples/eval/gsm8k_test.jsonl")
QUESTION = list(csv.reader(open(MMLU / "marketing_val.csv", encoding="utf-8")))[1][
    0
]  # "Considering what the audiences' communications needs and engaging with them ..."
CLEAN = "The river town held its annual boat festival, and the bakers sold pies along the quay all day."


def step(mode: str = "drop", sets=(str(MMLU),)) -> DecontFilter:
    return DecontFilter(DecontConfig(sets=list(sets), mode=mode))


def rewrap(text: str, every: int = 4) -> str:
    ws = text.split()
    return "\n".join(" ".join(ws[i : i + every]) for i in range(0, len(ws), every))


def case_and_punct(text: str) -> str:
    return re.sub(r"\s+", " ... ", text.upper()).replace("'", "").replace(":", "!") + "?!"


@pytest.mark.parametrize("variant", [lambda q: q, rewrap, case_and_punct], ids=["verbatim", "rewrapped", "case"])
def test_a_bundled_mmlu_question_in_any_form_is_dropped(variant):
    doc = Document("d", f"{CLEAN}\n\n{variant(QUESTION)}\n\n{CLEAN}")
    assert step()(doc, Counter()) == "decont.mmlu"
    assert len(doc.meta[DETAIL_KEY].split()) == 13


def test_twelve_shared_words_are_kept_and_thirteen_dropped():
    ws = words(QUESTION)
    assert len(ws) >= 16
    for k, expected in ((12, None), (13, "decont.mmlu")):
        doc = Document("d", f"zebra quartz {' '.join(ws[2 : 2 + k])} zebra quartz")
        assert step()(doc, Counter()) == expected, k
    assert step()(Document("c", CLEAN), Counter()) is None


def test_span_mode_cuts_the_question_and_keeps_the_rest():
    stats: Counter[str] = Counter()
    doc = Document("d", f"{CLEAN}\n{QUESTION}\n{CLEAN}")
    assert step("span")(doc, stats) is None
    assert doc.text.count(CLEAN) == 2 and "communications" not in doc.text
    assert stats["decont.mmlu.docs_edited"] == 1 and stats["decont.mmlu.spans"] == len(words(QUESTION)) - 12
    only = Document("e", QUESTION)
    assert step("span")(only, Counter()) == "decont.mmlu"  # nothing but the item: nothing left to keep


def test_bundled_names_and_bad_eval_sets(tmp_path):
    assert [s.name for s in step(sets=["mmlu", "gsm8k"]).sets] == ["mmlu", "gsm8k_test"]
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"id": 1, "answer": "x"}) + "\n")
    with pytest.raises(UsageError, match=r"qa.jsonl:1: no text field"):
        step(sets=[str(bad)])
    with pytest.raises(UsageError, match="no such eval set"):
        step(sets=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(UsageError, match="decontaminate.mode"):
        step("cut")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": CLEAN}) + "\n")
    with pytest.raises(UsageError, match="no text field"):
        run_filter([str(docs)], tmp_path / "out", config([str(bad)]), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.rejected").exists()  # nothing written


def crawl(tmp_path: Path, n_files: int = 2) -> list[str]:
    """JSONL files of clean, MMLU- and GSM8K-contaminated documents."""
    gsm = json.loads(GSM8K.read_text().splitlines()[3])["question"]
    mmlu = [r[0] for r in csv.reader(open(MMLU / "world_religions_val.csv", encoding="utf-8"))]
    mmlu = [q for q in mmlu if len(words(q)) >= 13]
    d = tmp_path / "in"
    d.mkdir()
    paths = []
    for f in range(n_files):
        rows = []
        for i in range(12):
            text = f"{CLEAN} Day {f}-{i}."
            if i % 4 == 1:
                text += " " + rewrap(mmlu[(i + f) % len(mmlu)])
            elif i % 4 == 2:
                text = gsm.upper() + " " + text
            rows.append({"id": f"{f}-{i}", "text": text})
        p = d / f"part{f}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(p))
    return paths


def config(sets: list[str], workers: int = 1, mode: str = "drop") -> FilterConfig:
    cfg = FilterConfig(steps=["decontaminate"] if sets else [], workers=workers)
    cfg.decontaminate.sets = sets
    cfg.decontaminate.mode = mode
    cfg.dedup.exact = cfg.dedup.minhash = cfg.dedup.c4_span = False
    return cfg


def measured(train: Path, data: Path) -> int:
    rows, _ = contamination.run(None, contamination.ContaminationConfig(train=str(train), data=str(data)), 8)
    return int(next(r["value"] for r in rows if r["metric"] == "contaminated_items"))


@pytest.mark.parametrize("mode", ["drop", "span"])
def test_after_decontamination_eval_finds_no_contaminated_item(tmp_path, mode):
    inputs = crawl(tmp_path)
    run_filter(inputs, tmp_path / "raw", config([]), progress=False)
    assert measured(tmp_path / "raw", MMLU) > 0 and measured(tmp_path / "raw", GSM8K) > 0  # the check can fail
    m = run_filter(inputs, tmp_path / "clean", config([str(MMLU), str(GSM8K)], mode=mode), progress=False)
    assert measured(tmp_path / "clean", MMLU) == 0 and measured(tmp_path / "clean", GSM8K) == 0
    funnel = {r["row"]: r["docs"] for r in m["stats"]["funnel"]}
    if mode == "drop":
        assert funnel == {"read": 24, "rejected.decont.mmlu": 6, "rejected.decont.gsm8k_test": 6, "kept": 12}
    else:
        assert funnel == {"read": 24, "kept": 24} and m["stats"]["counters"]["decont.mmlu.docs_edited"] == 6
    sets = m["stats"]["decontaminate"]["sets"]
    mmlu_rows = sum(len(list(csv.reader(open(f, encoding="utf-8")))) for f in MMLU.glob("*.csv"))
    assert [(s["name"], s["items"]) for s in sets] == [("mmlu", mmlu_rows), ("gsm8k_test", 50)]
    stages = [i.get("stage") for i in m["inputs"]]
    assert stages.count("decontaminate.mmlu") == 6 and stages.count("decontaminate.gsm8k_test") == 1


def test_output_is_the_same_for_one_and_two_workers(tmp_path):
    inputs = crawl(tmp_path)
    outs = []
    for w in (1, 2):
        m = run_filter(inputs, tmp_path / f"w{w}", config([str(MMLU), str(GSM8K)], workers=w), progress=False)
        ds = Dataset.open(tmp_path / f"w{w}")
        rejected = sorted((tmp_path / f"w{w}.rejected").glob("part-*.parquet"))
        outs.append((m["stats"]["funnel"], [pq.read_table(p).to_pylist() for p in [*ds.shards, *rejected]]))
    assert outs[0] == outs[1] and len(outs[0][1]) == 4


@pytest.mark.slow  # starts a local Ray instance
def test_output_is_the_same_on_ray(tmp_path):
    ray = pytest.importorskip("ray")
    inputs = crawl(tmp_path)
    outs = []
    for executor in ("local", "ray"):
        cfg = config([str(MMLU), str(GSM8K)], workers=2, mode="span")
        cfg.executor, cfg.ray_address = executor, None
        try:
            m = run_filter(inputs, tmp_path / executor, cfg, progress=False)
        finally:
            ray.shutdown()
        files = [
            *Dataset.open(tmp_path / executor).shards,
            *sorted((tmp_path / f"{executor}.rejected").glob("*.parquet")),
        ]
        outs.append((m["stats"]["funnel"], m["stats"]["counters"], [pq.read_table(p).to_pylist() for p in files]))
    assert outs[0] == outs[1] and outs[0][1]["decont.mmlu.docs_edited"] == 6
