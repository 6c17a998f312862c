"""`llmctl run`: stages in order, up-to-date stages skipped, a changed config re-runs that stage
and the ones after it, the first failure stops the run naming the stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from warc_utils import GOOD_PARAGRAPHS, html_page, response_record, write_warc_gz

from llmctl.cli.runner import _state_path, load_pipeline, run_pipeline
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

PIPE = """
name: two-filters
stages:
  - name: first
    run: filter {crawl} -o ${{out}} --workers 1
    config: {{c4: {{min_words_per_line: {mw}}}}}
  - name: second
    run: filter ${{first}} -o ${{out}} --no-pii --workers 1
  - name: unrelated
    run: filter {crawl} -o ${{out}} --no-c4 --workers 1
"""


def setup(tmp_path, mw=5):
    crawl = write_warc_gz(
        tmp_path / "c.warc.gz",
        [response_record(f"https://e.org/{i}", html_page(GOOD_PARAGRAPHS * 2, f"p{i}")) for i in range(3)],
    )
    f = tmp_path / "p.yaml"
    f.write_text(PIPE.format(crawl=crawl, mw=mw))
    return f


def statuses(records):
    return {r["stage"]: r["status"] for r in records}


def test_runs_skips_and_reruns_what_changed(tmp_path):
    f = setup(tmp_path)
    root = tmp_path / "run"
    assert statuses(run_pipeline(f, root, echo=lambda m: None)) == {"first": "ran", "second": "ran", "unrelated": "ran"}
    assert Dataset.open(root / "second").manifest["inputs"] == [Dataset.open(root / "first").lineage()]
    assert statuses(run_pipeline(f, root, echo=lambda m: None)) == {
        "first": "skipped",
        "second": "skipped",
        "unrelated": "skipped",
    }
    setup(tmp_path, mw=4)  # edit the first stage's config
    assert statuses(run_pipeline(f, root, echo=lambda m: None)) == {
        "first": "ran",
        "second": "ran",
        "unrelated": "skipped",
    }
    assert Dataset.open(root / "first").manifest["config"]["c4"]["min_words_per_line"] == 4
    assert statuses(run_pipeline(f, root, until="first", echo=lambda m: None)) == {"first": "skipped"}


def test_force_runs_every_stage_again_from_nothing(tmp_path):
    """--force re-runs a stage whose output is complete for the same config: the stage itself would
    skip it ("already complete"), so the runner removes the output first; a file left inside is gone."""
    f = setup(tmp_path)
    root = tmp_path / "run"
    run_pipeline(f, root, echo=lambda m: None)
    before = Dataset.open(root / "first").manifest
    (root / "first" / "stray.txt").write_text("left from an earlier run")
    lines = []
    assert statuses(run_pipeline(f, root, only=["first"], force=True, echo=lines.append)) == {"first": "ran"}
    assert not (root / "first" / "stray.txt").exists()
    assert Dataset.open(root / "first").manifest["config"] == before["config"]
    log = _state_path(root, load_pipeline(f).stage("first")).with_suffix(".log").read_text()
    assert "wrote" in log and "already complete" not in log
    assert statuses(run_pipeline(f, root, echo=lambda m: None))["first"] == "skipped"


def test_failure_names_the_stage(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("stages:\n  - name: broken\n    run: filter /no/such/input -o ${out}\n")
    with pytest.raises(UsageError, match=r"stage 'broken' failed: .*no such file"):
        run_pipeline(f, tmp_path / "run", echo=lambda m: None)


def test_bad_pipeline_files(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("stages:\n  - name: a\n    run: filter ${b} -o ${out}\n")
    with pytest.raises(UsageError, match=r"uses \$\{b\} before"):
        load_pipeline(f)
    f.write_text("stages: []\n")
    with pytest.raises(UsageError, match="non-empty 'stages'"):
        load_pipeline(f)
    with pytest.raises(UsageError, match="not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_changed_input_file_reruns_the_stages_that_read_it(tmp_path):
    f = setup(tmp_path)
    root = tmp_path / "run"
    run_pipeline(f, root, echo=lambda m: None)
    write_warc_gz(tmp_path / "c.warc.gz", [response_record("https://e.org/new", html_page(GOOD_PARAGRAPHS * 3, "new"))])
    assert statuses(run_pipeline(f, root, echo=lambda m: None)) == {"first": "ran", "second": "ran", "unrelated": "ran"}
    assert Dataset.open(root / "first").manifest["stats"]["documents_read"] == 1


@pytest.mark.parametrize("path", sorted(Path("pipelines").glob("*.yaml")))
def test_shipped_pipelines_parse_with_the_real_cli(path, tmp_path):
    """Every stage of every shipped pipeline is a command line the CLI accepts (parsed, not run)."""
    import typer

    from llmctl.cli import app
    from llmctl.cli.runner import stage_args

    if path.name == "filter.yaml":  # a stage config, not a pipeline (tests/test_config.py)
        return
    root_cmd = typer.main.get_command(app)
    for stage in load_pipeline(path).stages:
        args = stage_args(stage, tmp_path)
        cmd, ctx_args, parent, name = root_cmd, list(args), None, "llmctl"
        while hasattr(cmd, "resolve_command"):
            ctx = cmd.make_context(cmd.name or "llmctl", list(ctx_args), parent=parent, resilient_parsing=True)
            name, cmd, ctx_args = cmd.resolve_command(
                ctx, list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])) + ctx.args
            )
            parent = ctx
        cmd.make_context(name, list(ctx_args), parent=parent)  # raises on an unknown flag or a bad value


def write_results(d: Path, rows: list[tuple[str, str, float, float | None]]) -> None:
    """An eval results dataset as `llmctl eval` writes it (one shard of (task, metric) rows)."""
    from dataclasses import dataclass

    from llmctl.eval.base import RESULT_SCHEMA
    from llmctl.store.dataset import StageOutput

    @dataclass
    class Cfg:
        tasks: str = "t"

    so = StageOutput(d, "eval", Cfg(), inputs=[])
    w = so.shard_writer("t.parquet", RESULT_SCHEMA)
    for task, metric, value, se in rows:
        w.write({"task": task, "metric": metric, "value": value, "stderr": se, "n": 100})
    so.finish_task("t", {"data": [{"path": "t.parquet", **w.close()}]})
    so.finalize(["t"], RESULT_SCHEMA)


def write_samples(d: Path, task: str, rows: list[dict]) -> None:
    """Per-item samples of one task, where `llmctl eval` writes them (RESULTS/_samples/TASK)."""
    import shutil
    from dataclasses import dataclass

    import pyarrow as pa

    from llmctl.eval.runner import SAMPLES_DIR
    from llmctl.store.dataset import StageOutput

    @dataclass
    class Cfg:
        limit: int = 0

    schema = pa.Table.from_pylist(rows).schema
    shutil.rmtree(d / SAMPLES_DIR / task, ignore_errors=True)
    so = StageOutput(d / SAMPLES_DIR / task, "eval_samples", Cfg(), inputs=[])
    w = so.shard_writer("part-00000.parquet", schema)
    for r in rows:
        w.write(r)
    so.finish_task("part-00000", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    so.finalize(["part-00000"], schema)


EFFECTS = """
stages:
  - name: base
    run: pretrain x -o ${out}
  - name: eval_base
    run: eval ${base} -o ${out}
  - name: sft
    run: sft d --from ${base} -o ${out}
  - name: reward
    run: reward p --from ${sft} -o ${out}
  - name: eval_sft
    run: eval ${sft} -o ${out} --task stop_rate
  - name: rl
    run: rl p --from ${reward} -o ${out}
  - name: eval_rl
    run: eval ${rl} -o ${out}
"""


def test_stage_effects_compare_each_eval_with_the_nearest_evaluated_predecessor(tmp_path):
    from llmctl.cli.runner import effects_table, stage_effects

    f = tmp_path / "p.yaml"
    f.write_text(EFFECTS)
    root = tmp_path / "run"
    write_results(root / "eval_base", [("stop_rate", "stop_rate", 0.1, 0.03), ("perplexity", "documents", 20, None)])
    write_results(
        root / "eval_sft",
        [
            ("stop_rate", "stop_rate", 0.95, 0.04),
            ("perplexity", "documents", 20, None),
            ("prefs", "accuracy", 0.6, 0.1),
        ],
    )
    assert stage_effects(f, root) == [
        {
            "stage": "sft",
            "before": "base",
            "eval_before": "eval_base",
            "eval_after": "eval_sft",
            "task": "stop_rate",
            "metric": "stop_rate",
            "value_before": 0.1,
            "value_after": 0.95,
            "change": pytest.approx(0.85),
            "stderr": pytest.approx(0.05),  # sqrt(0.03^2 + 0.04^2); `documents` has none: left out
            "paired": False,
        }
    ]  # eval_rl has not run: no row for rl
    write_results(root / "eval_rl", [("stop_rate", "stop_rate", 0.85, 0.04)])  # rl --from reward --from sft
    rl = [r for r in stage_effects(f, root) if r["stage"] == "rl"]
    assert [(r["before"], r["change"]) for r in rl] == [("sft", pytest.approx(-0.1))]
    assert effects_table(stage_effects(f, root)).row_count == 2


def test_stage_effects_pair_the_items_both_evals_scored(tmp_path):
    """Both evals kept exact_match item by item over the same ids: the change's standard error is that of
    the mean per-item difference (here far below the independent one); different items, or per-item
    values that do not average to the reported figure, fall back to the independent one."""
    import statistics

    from llmctl.cli.runner import effects_table, stage_effects
    from llmctl.eval.base import mean_stderr

    f = tmp_path / "p.yaml"
    f.write_text(EFFECTS)
    root = tmp_path / "run"
    before = [1.0] * 30 + [0.0] * 70
    after = [1.0] * 30 + [1.0] * 12 + [0.0] * 58  # the same 30 right, and 12 more
    for ev, hits in (("eval_base", before), ("eval_sft", after)):
        write_results(root / ev, [("exact_match", "exact_match", sum(hits) / 100, mean_stderr(hits))])
        write_samples(root / ev, "exact_match", [{"id": str(i), "exact_match": h} for i, h in enumerate(hits)])
    (row,) = stage_effects(f, root)
    d = [a - b for a, b in zip(after, before)]
    assert row["paired"] is True and row["change"] == pytest.approx(0.12)
    assert row["stderr"] == pytest.approx(statistics.stdev(d) / 10)  # 0.0327
    independent = (mean_stderr(before) ** 2 + mean_stderr(after) ** 2) ** 0.5  # 0.0673
    assert row["stderr"] < 0.6 * independent
    assert "yes" in str(effects_table([row]).columns[-1]._cells)

    # different items: not paired
    write_samples(root / "eval_sft", "exact_match", [{"id": str(i + 1), "exact_match": h} for i, h in enumerate(after)])
    (row,) = stage_effects(f, root)
    assert row["paired"] is False and row["stderr"] == pytest.approx(independent)

    # the same ids, but per-item values that are not what the eval reported: not paired
    write_samples(root / "eval_sft", "exact_match", [{"id": str(i), "exact_match": h} for i, h in enumerate(before)])
    (row,) = stage_effects(f, root)
    assert row["paired"] is False and row["stderr"] == pytest.approx(independent)
