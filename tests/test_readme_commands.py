"""The READMEs' commands, run as written on the bundled data (litgpt's habit): a README that drifts
from the CLI fails here.

README.md's stage-by-stage block runs top to bottom, each command in its own process as a user
runs it, in a scratch directory whose examples/, pipelines/ and tests/fixtures/ are the repository's.
Each command keeps its arguments; to fit the
suite's budget, these flags are appended (the last occurrence of an option wins), so the same
code paths run on a smaller scale:

    pretrain   --steps 3 --seq-len 64 --batch-tokens 512 --eval-every 0 --ckpt-every 3   (0: no validation pass)
    sft, reward, dpo   --steps 2 --batch-size 4 --micro-batch 4 --eval-every 0 --max-len 256
    rl         --steps 2 --rollout-prompts 4 --epochs 1 --batch-size 4 --micro-batch 4 --eval-every 0 --max-new-tokens 8
    eval       --limit 2 --set exact_match.max_new_tokens=16 --set winrate.max_new_tokens=16
    generate   --max-tokens 8

`llmctl run pipelines/toy.yaml -o out/toy` runs the shortened toy pipeline of tests/conftest.py
(its stages as shipped, fewer steps) into that fixture's run root, where every stage is already
up to date. examples/README.md's commands that are not pipeline stages (inspect, generate, plot,
export, report, the screenshot script) run against that run; its stage commands are checked
against pipelines/toy.yaml and the run in tests/test_toy_pipeline.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

REPO = Path(__file__).resolve().parent.parent
SMALL = {
    "pretrain": "--steps 3 --seq-len 64 --batch-tokens 512 --eval-every 0 --ckpt-every 3",
    "sft": "--steps 2 --batch-size 4 --micro-batch 4 --eval-every 0 --max-len 256",
    "reward": "--steps 2 --batch-size 4 --micro-batch 4 --eval-every 0 --max-len 256",
    "dpo": "--steps 2 --batch-size 4 --micro-batch 4 --eval-every 0 --max-len 256",
    "rl": "--steps 2 --rollout-prompts 4 --epochs 1 --batch-size 4 --micro-batch 4 --eval-every 0 --max-new-tokens 8",
    "eval": "--limit 2 --set exact_match.max_new_tokens=16 --set winrate.max_new_tokens=16",
    "generate": "--max-tokens 8",
}


def section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n## ", start + len(heading))
    return md[start : nxt if nxt >= 0 else len(md)]


def commands(block: str) -> list[list[str]]:
    """The `llmctl` commands of a bash block: continuation lines joined, comments dropped, `&&` split."""
    text = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in text.splitlines():
        args = shlex.split(line, comments=True)
        while args:
            cut = args.index("&&") if "&&" in args else len(args)
            if args[0] == "llmctl":
                out.append(args[1:cut])
            args = args[cut + 1 :]
    return out


def run(args: list[str]) -> str:
    """`llmctl ARGS` as a user runs it: its own process (in one process, `quality train` after the
    other stages' commands diverged with NaN while the same command alone trains; see the report
    of issue 22)."""
    r = subprocess.run(
        [sys.executable, "-m", "llmctl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert r.returncode == 0, f"llmctl {shlex.join(args)}: {r.stderr.strip()[-2000:]}"
    return r.stdout


@pytest.mark.slow  # ~25 commands, each its own process: about a minute on 2 quiet cores, 4 at load average 8
def test_readme_stage_by_stage_block_runs_as_written(toy_run, in_repo_copy):
    md = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", section(md, "## From crawl to model, stage by stage"), re.S).group(1)
    cmds = commands(block)
    assert len(cmds) >= 20 and {c[0] for c in cmds} >= {
        "filter",
        "quality",
        "tokenize",
        "pretrain",
        "generate",
        "export",
        "plot",
        "data",
        "sft",
        "reward",
        "dpo",
        "eval",
        "run",
        "report",
    }
    pipe, root, _ = toy_run
    for args in cmds:
        if args[0] == "run":
            assert args[1:] == ["pipelines/toy.yaml", "-o", "out/toy"]
            args = ["run", str(pipe), "-o", str(root)]  # the shortened toy pipeline, already up to date
        elif args[0] == "report" and args[1:] == ["out/toy"]:
            args = ["report", str(root)]
        text = run([*args, *SMALL.get(args[0], "").split()])
        if args[0] == "eval":  # every task asked for is in the table (lm-eval:NAME under its NAME)
            asked = [args[i + 1].split(":")[-1].split(",")[0] for i, a in enumerate(args) if a == "--task"]
            assert asked and all(t in text for t in asked), (asked, text)
    assert (in_repo_copy / "hf" / "base" / "config.json").is_file() and (in_repo_copy / "loss.png").is_file()
    assert (root / "report" / "index.html").is_file()


def test_examples_readme_commands_run_on_the_toy_run(toy_run, in_repo_copy):
    from test_toy_pipeline import figures_script

    ef = figures_script()
    _, root, _ = toy_run
    md = (REPO / "examples" / "README.md").read_text()
    items = [i.strip() for m in ef.MARKER.finditer(md) for i in m.group(1).split(";") if i.strip()[:2] in ("$ ", "# ")]
    assert len(items) >= 4
    for item in items:
        args = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: str(root / m.group(1)), item[2:]))
        assert run([*args, *SMALL.get(args[0], "").split()]) is not None
    static = [c for b in re.findall(r"```bash\n(.*?)```", md, re.S) for c in commands(b)]
    assert ["report", "out/demo"] in static  # (and `make demo`, the pipeline itself)
    run(["report", str(root)])


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="needs Chromium (apt-get install chromium)",
)
def test_screenshot_captures_the_whole_page(toy_run):
    """The screenshot is as tall as the page (it was cut at 5,200 px, without the eval table)."""
    import struct

    _, root, _ = toy_run
    run(["report", str(root)])
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "screenshot_report.sh"), str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    png = (root / "report" / "screenshot.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    measured = int(re.search(r"\(\d+x(\d+)\)", r.stdout).group(1))
    assert width == 1200 and height == measured > 5200
