"""CI smoke run: the shipped toy pipeline end to end, with fewer steps (tests/conftest.py `toy_run`),
checked the way a user would, and checked against the figures examples/README.md quotes.

examples/README.md's figure blocks are written by scripts/examples_figures.py from a full run
(`make examples-readme`). This file checks what a shortened run can check: each block's commands
are pipelines/toy.yaml's (a changed pipeline fails here until the figures are regenerated); every
figure that does not depend on step counts (funnel, tokenizer, tokens, data imports, the training
stages' data lines) equals this run's, timings masked; and the first pretraining evaluation
(step 50 of 400) is re-run with `--stop-after 50`, which follows the full run's schedule exactly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from llmctl.cli.runner import load_pipeline, run_pipeline
from llmctl.data.chat_data import read_rows
from llmctl.report.build import build_report
from llmctl.store.dataset import MANIFEST, Dataset

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

REPO = Path(__file__).resolve().parent.parent
EXAMPLES_README = REPO / "examples" / "README.md"


def figures_script():
    spec = importlib.util.spec_from_file_location("examples_figures", REPO / "scripts" / "examples_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_stage_ran_and_left_a_manifest(toy_run):
    pipe, root, records = toy_run
    names = [s.name for s in load_pipeline(pipe).stages]
    assert [r["stage"] for r in records] == names and all(r["status"] == "ran" for r in records)
    for name in names:
        assert (root / name / MANIFEST).is_file(), name
        assert (root / "_pipeline" / f"{name}.log").stat().st_size > 0, name  # what it printed, kept
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
    assert {r["task"] for r in rows} == wanted | ({"core"} if "mc" in wanted else set())  # core: the mc summary
    assert all(r["value"] is not None for r in rows)


def test_report_renders_every_section(toy_run):
    _, root, _ = toy_run
    index = build_report(root)
    page = index.read_text()
    for section in ("Lineage", "Filter funnel", "Tokens", "Training", "reward margins", "Evaluation"):
        assert section in page, section
    for src in re.findall(r'src="([^"]+)"', page):
        assert (index.parent / src).stat().st_size > 1000, src
    assert "filter.rejected" not in page.split("<h2>Lineage")[1].split("</table>")[0]  # shown with filter, not a stage


# ----------------------------------------------------------------------------- examples/README.md


def readme_items() -> list[str]:
    ef = figures_script()
    return [i.strip() for m in ef.MARKER.finditer(EXAMPLES_README.read_text()) for i in m.group(1).split(";")]


def blocks_by_item() -> dict[str, str]:
    """{item: its part of the README's block} (parts are separated by blank lines before `$ `)."""
    ef = figures_script()
    out = {}
    for m in ef.MARKER.finditer(EXAMPLES_README.read_text()):
        items = [i.strip() for i in m.group(1).split(";")]
        parts = re.split(r"\n\n(?=\$ )", m.group(2).rstrip("\n"))
        out.update(zip(items, parts))
    return out


def shown_command(part: str) -> list[str]:
    """The command a block part shows (`$ llmctl ...` with its continuation lines), as arguments."""
    lines = []
    for ln in part.splitlines():
        lines.append(ln.removesuffix("\\"))
        if not ln.endswith("\\"):
            break
    return shlex.split(" ".join(lines).removeprefix("$ "))


def test_examples_readme_shows_every_stage_with_the_pipelines_command():
    ef = figures_script()
    commands = ef.stage_commands(REPO / "pipelines" / "toy.yaml")
    assert [i for i in readme_items() if i in commands] == list(commands), (
        "examples/README.md lists each stage of pipelines/toy.yaml, in order"
    )
    for name, part in blocks_by_item().items():
        if name in commands:
            assert shown_command(part) == shlex.split(commands[name]), (
                f"examples/README.md shows another command for {name} than pipelines/toy.yaml: "
                "regenerate its figures (make examples-readme)"
            )


def test_examples_readme_figures_that_a_short_run_reproduces(toy_run):
    """Everything before training results is independent of the step counts: it must be what this
    run printed (timings masked)."""
    ef = figures_script()
    _, root, _ = toy_run
    commands = ef.stage_commands(REPO / "pipelines" / "toy.yaml")
    readme = blocks_by_item()
    steps = re.compile(r"\d[\d,]* steps = [\d,]+ tokens \([\d.]+ epochs\)")
    for name in ("filter", "tokenizer", "tokens", "sft_data", "prefs", "pretrain", "sft", "reward", "dpo"):
        got = ef.render_item(name, root, commands, ef.SHOWN_ROOT)
        if name in ("pretrain", "sft", "reward", "dpo"):  # their data lines; losses depend on the step count

            def setup(text: str) -> list[str]:
                return [
                    steps.sub("#", ln)
                    for ln in text.splitlines()[1:]
                    if not ln.startswith(("step ", "finished", "$", "    --", "[", "warning: warmup"))
                ]  # "[...]": unfinished; the warning: a short run

            assert setup(ef.masked(readme[name])) == setup(ef.masked(got)), name
        else:
            assert ef.masked(readme[name]).split("\n", 1)[1] == ef.masked(got).split("\n", 1)[1], name


def test_examples_readme_timings_list_the_pipelines_stages_only(tmp_path):
    """The timings block shows the stages the pipeline file has, in its order; the state a stage
    the file no longer has left in ROOT/_pipeline (an old run's) is not shown or counted."""
    ef = figures_script()
    state = tmp_path / "_pipeline"
    state.mkdir()
    for name, secs in (("old_stage", 100.0), ("b", 2.0), ("a", 1.5)):
        (state / f"{name}.json").write_text(json.dumps({"stage": name, "seconds": secs, "load_average_1min": 0.5}))
    lines = ef.timings(tmp_path, ["a", "b", "not_run"]).splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["a", "b", "total"]
    assert "3.5 s" in lines[2]


def test_examples_readme_first_pretraining_evaluation_reproduces(toy_run, tmp_path):
    """The full run's step-50 lines, from a run of the same command stopped after 50 steps."""
    from llmctl.cli import app

    _, root, _ = toy_run
    stage = next(s for s in load_pipeline(REPO / "pipelines" / "toy.yaml").stages if s.name == "pretrain")
    args = re.sub(
        r"\$\{(\w+)\}", lambda m: str(tmp_path / "p" if m.group(1) == "out" else root / m.group(1)), stage.run
    )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        app([*args.split(), "--stop-after", "50"], standalone_mode=False)
    ef = figures_script()
    fifty = [ln for ln in ef.masked(buf.getvalue()).splitlines() if ln.startswith("step    50/")]
    quoted = [ln for ln in ef.masked(blocks_by_item()["pretrain"]).splitlines() if ln.startswith("step    50/")]
    assert len(fifty) == 2 and len(quoted) == 2  # train and val line
    if ef.recorded_environment(EXAMPLES_README.read_text()) == ef.environment():
        assert quoted == fifty  # the same torch, CPU kernels and thread count: the same digits
    else:  # other kernels sum in another order (2 vs 1 thread: 7.1725 vs 7.1682 at step 50)
        nums = [[float(x) for x in re.findall(r"(?:loss|val_loss) (\d+\.\d+)", ln)] for ln in (*quoted, *fifty)]
        assert nums[0] == pytest.approx(nums[2], rel=0.01) and nums[1] == pytest.approx(nums[3], rel=0.01)


def table_rows(block: str) -> list[list[str]]:
    """The cells of a rich table's body rows in a figure block."""
    return [[c.strip() for c in ln.strip().strip("│").split("│")] for ln in block.splitlines() if ln.startswith("│")]


def test_examples_readme_demo_pretraining_and_sft_work():
    """The full demo run's figures (`make examples-readme`): pretraining did not overfit, the SFT model
    ends its answers to the held-out prompts, and the stage-effects table compares each model with the
    one it started from."""
    blocks = blocks_by_item()
    val = [float(x) for x in re.findall(r"\| val_loss (\d+\.\d+)", blocks["pretrain"])]
    assert len(val) >= 3 and val[-1] <= min(val) + 0.02, val  # the val loss had not turned up at the end
    effects = {(r[0], r[2], r[3]): r for r in table_rows(blocks["effects"])}
    stage, frm, task, metric, before, after, change, se, z, paired = effects[("sft", "stop_rate", "stop_rate")]
    assert frm == "pretrain" and float(after) >= 0.9
    sft_rows = {(r[0], r[1]): r for r in table_rows(blocks["eval_sft"])}
    assert float(sft_rows[("stop_rate", "stop_rate")][2]) == float(after)
    assert int(sft_rows[("stop_rate", "stop_rate")][4]) >= 100
    assert {k[0] for k in effects} >= {"sft", "grpo", "dpo"}


def test_examples_readme_demo_grpo_beats_sft():
    """GRPO's held-out exact match is above the SFT model's by more than two standard errors of the
    difference (the stage-effects table of the full demo run; paired: both models answered the same
    held-out problems)."""
    effects = {(r[0], r[2], r[3]): r for r in table_rows(blocks_by_item()["effects"])}
    stage, frm, task, metric, before, after, change, se, z, paired = effects[("grpo", "exact_match", "exact_match")]
    assert frm == "sft" and paired == "yes"
    assert float(change) == pytest.approx(float(after) - float(before), abs=2e-4)
    assert float(change) > 2 * float(se), (before, after, se)


def test_the_run_prints_each_stages_effect(toy_run):
    from llmctl.cli.runner import stage_effects

    pipe, root, _ = toy_run
    rows = stage_effects(pipe, root)
    pairs = {(r["stage"], r["before"]) for r in rows}
    assert pairs == {("sft", "pretrain"), ("grpo", "sft"), ("dpo", "sft")}
    for r in rows:
        got = {
            (x["task"], x["metric"]): x["value"] for x in Dataset.open(root / r["eval_after"], stage="eval").iter_rows()
        }
        assert got[(r["task"], r["metric"])] == r["value_after"]
    assert {(r["task"], r["metric"]) for r in rows if r["stage"] == "grpo"} >= {
        ("stop_rate", "stop_rate"),
        ("exact_match", "exact_match"),
        ("perplexity", "loss"),
    }


def test_ppo_pipeline_runs_on_the_toy_run_and_reports_its_held_out_reward_with_a_standard_error(toy_run, tmp_path):
    """pipelines/ppo.yaml as shipped, on the (shortened) toy run instead of out/demo, with fewer steps,
    shorter answers and fewer held-out prompts; every held-out answer logged, so the reported mean and
    standard error (over prompts, of each prompt's mean score) are recomputed from the answers' scores.
    Its held-out prompts are those of the reward model's held-out pairs, and no SFT dialogue shares a
    first turn with any prompt."""
    _, toy_root, _ = toy_run
    text = (REPO / "pipelines" / "ppo.yaml").read_text()
    assert [s.name for s in load_pipeline(REPO / "pipelines" / "ppo.yaml").stages] == [
        "prompts",
        "sft_data",
        "sft",
        "rl",
    ]
    short = text.replace("out/demo/", f"{toy_root}/")
    for flag, value, count in (
        ("--steps", 4, 2),
        ("--eval-every", 4, 2),
        ("--ckpt-every", 4, 1),
        ("--max-new-tokens", 8, 1),
    ):
        short, n = re.subn(rf"{flag} \d+", f"{flag} {value}", short)
        assert n == count, flag
    short, n = re.subn(r"val_limit=\d+", "val_limit=6 --set log_samples=1000", short)
    assert n == 1
    pipe = tmp_path / "ppo.yaml"
    pipe.write_text(short)
    root = tmp_path / "run"
    with contextlib.chdir(REPO):
        records = run_pipeline(pipe, root, echo=lambda m: None)
    assert [r["status"] for r in records] == ["ran"] * 4
    manifest = json.loads((root / "rl" / MANIFEST).read_text())
    assert json.loads((root / "sft" / MANIFEST).read_text())["inputs"][0]["path"].endswith("sft_data")
    log = (root / "_pipeline" / "rl.log").read_text()
    assert "held-out reward at start" in log and "(SE)" in log and "val_reward_se" in log
    last = [json.loads(x) for x in (root / "rl" / "metrics.jsonl").read_text().splitlines()][-1]
    held = [
        json.loads(x)
        for x in (root / "rl" / "samples.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "held_out" and json.loads(x)["step"] == last["step"]
    ]
    per: dict[int, list[float]] = {}
    for s in held:
        per.setdefault(s["prompt_index"], []).append(s["reward"])
    assert len(per) == 6 and all(len(v) == 2 for v in per.values())  # val_samples=2 at temperature 1
    means = [sum(v) / 2 for v in per.values()]
    mean = sum(means) / 6
    se = (sum((m - mean) ** 2 for m in means) / 5 / 6) ** 0.5
    assert last["val_reward"] == pytest.approx(mean, abs=1e-6)
    assert last["val_reward_se"] == pytest.approx(se, rel=1e-6) and se > 0
    assert manifest["data"]["val_reward_start_se"] > 0
    # the held-out prompts are the reward model's held-out pairs' prompts, which the SFT data never shows
    prompts, _ = read_rows(root / "prompts")
    rm_val, _ = read_rows(toy_root / "prefs")
    val_prompts = [json.dumps(r["prompt"]) for r in prompts if r["split"] == "val"]
    assert sorted(val_prompts) == sorted(json.dumps(r["prompt"]) for r in rm_val if r["split"] == "val")
    firsts = {
        json.loads(x)["messages"][0]["content"].strip().lower()
        for x in (REPO / "examples" / "prefs" / "hh_rlhf_harmless_base_sft.jsonl").read_text().splitlines()
    }
    assert not firsts & {r["prompt"][0]["content"].strip().lower() for r in prompts}
