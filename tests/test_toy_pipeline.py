"""CI smoke run: the shipped toy pipeline end to end, with fewer steps, checked the way a user would.

The stages and their flags are pipelines/toy.yaml's own; only step counts and eval-every are
scaled down, and the preference pairs held out (a quarter in the toy: 310 pairs, scored by three
models in the eval) cut to 5%, so the run takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmctl.datasets import MANIFEST, Dataset
from llmctl.pipeline import load_pipeline, run_pipeline
from llmctl.report import build_report

TOY = Path("pipelines/toy.yaml")
SHORT = {"pretrain": (60, 20), "sft": (20, 10), "reward": (10, 10), "dpo": (10, 10)}  # (steps, eval_every)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    text = TOY.read_text()
    for name, (steps, every) in SHORT.items():
        line = re.search(rf"run: {name} .*", text).group(0)
        short = re.sub(r"--steps \d+", f"--steps {steps}", line)
        short = re.sub(r"--eval-every \d+", f"--eval-every {every}", short)
        short = re.sub(r"--ckpt-every \d+", f"--ckpt-every {steps}", short)
        text = text.replace(line, short)
    prefs = re.search(r"run: data import examples/prefs/.*", text).group(0)
    text = text.replace(prefs, re.sub(r"--val-fraction [0-9.]+", "--val-fraction 0.05", prefs))
    text = text.replace(" --set prefs.limit=0", "")  # eval: --limit 20 for prefs too
    tmp = tmp_path_factory.mktemp("toy")
    pipe = tmp / "toy.yaml"
    pipe.write_text(text)
    root = tmp / "run"
    records = run_pipeline(pipe, root, echo=lambda m: None)
    return pipe, root, records


def test_every_stage_ran_and_left_a_manifest(toy_run):
    pipe, root, records = toy_run
    names = [s.name for s in load_pipeline(pipe).stages]
    assert [r["stage"] for r in records] == names and all(r["status"] == "ran" for r in records)
    for name in names:
        assert (root / name / MANIFEST).is_file(), name
    # a second run has nothing to do
    again = run_pipeline(pipe, root, echo=lambda m: None)
    assert all(r["status"] == "skipped" for r in again)


def test_funnel_adds_up_and_lineage_reaches_the_crawl(toy_run):
    _, root, _ = toy_run
    m = Dataset.open(root / "filter").manifest
    rows = {r["row"]: r["docs"] for r in m["stats"]["funnel"]}
    assert rows["read"] == rows["kept"] + sum(v for k, v in rows.items() if k not in ("read", "kept"))
    assert rows["kept"] == m["num_rows"] > 0
    assert any(i["path"].endswith("crawl-00000.warc.gz") for i in m["inputs"])
    tokens = Dataset.open(root / "tokens").manifest
    assert Dataset.open(root / "filter").lineage() in tokens["inputs"]


def test_losses_went_down(toy_run):
    _, root, _ = toy_run
    for stage in ("pretrain", "sft"):
        recs = [json.loads(x) for x in (root / stage / "metrics.jsonl").read_text().splitlines()]
        val = [r["val_loss"] for r in recs if "val_loss" in r]
        assert len(val) >= 2 and val[-1] < val[0], (stage, val)
    dpo = [json.loads(x) for x in (root / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in dpo)


def test_eval_table_has_every_task(toy_run):
    pipe, root, _ = toy_run
    run = next(s.run for s in load_pipeline(pipe).stages if s.name == "eval")
    wanted = set(re.findall(r"--task (\w+)", run))
    rows = list(Dataset.open(root / "eval", stage="eval").iter_rows())
    assert {r["task"] for r in rows} == wanted
    assert all(r["value"] is not None for r in rows)


def test_report_renders_every_section(toy_run):
    _, root, _ = toy_run
    index = build_report(root)
    page = index.read_text()
    for section in ("Lineage", "Filter funnel", "Tokens", "Training", "reward margins", "Evaluation"):
        assert section in page, section
    for img in re.findall(r"src='([^']+)'", page):
        assert (index.parent / img).stat().st_size > 1000, img
