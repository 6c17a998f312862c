"""Write (or check) the figures examples/README.md quotes, from a run of pipelines/toy.yaml.

    make demo && python scripts/examples_figures.py out/demo           # rewrite the figure blocks
    python scripts/examples_figures.py out/demo --check                # exit 1 (with a diff) if they differ
    make examples-readme                                               # both steps: run, then rewrite

examples/README.md marks each generated block with a comment, followed by a fenced block that this
script owns::

    <!-- figures: filter -->                       what stage `filter` printed (ROOT/_pipeline/filter.log)
    <!-- figures: tokenizer; tokens; $ tokenize inspect ${tokenizer} "Once upon a time" -->
    <!-- figures: timings -->                      seconds per stage and the machine's load average
    <!-- figures: effects -->                      the stage-effects table `llmctl run` prints at the end

An item is a stage name (its command as pipelines/toy.yaml writes it, then its output as `llmctl
run` logged it: step lines at up to five evaluation steps, everything else whole), `$ CMD` (an
llmctl command run now, `${stage}` being that stage's output), or `# CMD` (a command shown, not
run). Paths under ROOT are shown under `out/demo`. `--check` compares with timings and rates
masked (they change from run to run; the numbers that a seed fixes must not), which is also what
tests/test_toy_pipeline.py does for the parts a shortened run reproduces. Training numbers are
fixed by the seed for a given torch build, CPU capability and thread count (the timings block
names them): another kind of CPU sums in another order and differs from the 3rd decimal on.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- figures: (.*?) -->\n```[a-z]*\n(.*?)```\n", re.S)
SHOWN_ROOT = "out/demo"
# timings and throughput: they change from run to run, so --check masks them
VOLATILE = re.compile(r"\d[\d,]*(?:\.\d+)?(?= ?(?:s\b|s\)|s,|s;|tok/s|MB/s|docs/s|/s))")
STEP = re.compile(r"^step +(\d+)/(\d+) \|")


def wrap(cmd: str, width: int = 100) -> str:
    """A long command split before its options, with shell continuations."""
    lines, cur = [], ""
    for tok in shlex.split(cmd):
        tok = shlex.quote(tok)
        if cur and len(cur) + 1 + len(tok) > width and tok.startswith("--"):
            lines.append(cur + " \\")
            cur = "    " + tok
        else:
            cur = f"{cur} {tok}" if cur else tok
    return "\n".join(lines + [cur])


def stage_commands(pipeline: Path, shown: str = SHOWN_ROOT) -> dict[str, str]:
    """{stage: `llmctl ...` as the pipeline file writes it, with ${x} shown as out/demo/x}."""
    sys.path.insert(0, str(REPO))
    from llmctl.cli.runner import load_pipeline

    out = {}
    for s in load_pipeline(pipeline).stages:
        run = re.sub(r"\$\{(\w+)\}", lambda m: f"{shown}/{s.name if m.group(1) == 'out' else m.group(1)}", s.run)  # noqa: B023 (called at once)
        out[s.name] = "llmctl " + " ".join(run.split())
    return out


def keep_lines(text: str) -> list[str]:
    """A stage's log without the per-step chatter: step lines only at up to five evaluation steps
    (a step with a validation line: its two lines), everything else whole."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    val_steps = [int(STEP.match(ln).group(1)) for ln in lines if STEP.match(ln) and "| val_" in ln]
    if val_steps:
        n = len(val_steps)
        picks = {val_steps[round(i * (n - 1) / 4)] for i in range(5)} if n > 5 else set(val_steps)
    else:
        picks = set()
    return [ln for ln in lines if not STEP.match(ln) or int(STEP.match(ln).group(1)) in picks]


def render_item(item: str, root: Path, commands: dict[str, str], shown: str) -> str:
    def show(text: str) -> str:
        return text.replace(str(root.resolve()), shown).replace(str(root), shown)

    item = item.strip()
    if item == "timings":
        return timings(root, list(commands))
    if item == "effects":
        return effects(root)
    shown_cmd = "llmctl " + re.sub(r"\$\{(\w+)\}", lambda m: f"{shown}/{m.group(1)}", item[2:])
    if item.startswith("# "):
        return "$ " + wrap(shown_cmd)
    if item.startswith("$ "):
        cmd = re.sub(r"\$\{(\w+)\}", lambda m: str(root / m.group(1)), item[2:])
        r = subprocess.run(
            [sys.executable, "-m", "llmctl", *shlex.split(cmd)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "200"},
        )
        if r.returncode != 0:
            raise SystemExit(f"llmctl {cmd} failed: {r.stderr.strip()}")
        return "$ " + wrap(shown_cmd) + "\n" + "\n".join(keep_lines(show(r.stdout)))
    if item not in commands:
        raise SystemExit(f"{item}: not a stage of {sorted(commands)}")
    log, done = root / "_pipeline" / f"{item}.log", root / "_pipeline" / f"{item}.json"
    lines = keep_lines(show(log.read_text())) if log.is_file() else []
    if not done.is_file():  # a run stopped before this stage finished: say so rather than show a part as a result
        lines.append(f"[{item} did not finish in the run these figures come from: `make examples-readme` writes them]")
    return "$ " + wrap(commands[item]) + "\n" + "\n".join(lines)


def effects(root: Path, pipeline: Path = REPO / "pipelines" / "toy.yaml") -> str:
    """The stage-effects table `llmctl run` prints after the last stage (llmctl.cli.runner.stage_effects)."""
    import io

    from rich.console import Console

    sys.path.insert(0, str(REPO))
    from llmctl.cli.runner import effects_table, stage_effects

    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None, force_terminal=False).print(
        effects_table(stage_effects(pipeline, root))
    )
    return f"$ llmctl run pipelines/toy.yaml -o {SHOWN_ROOT}   # its last lines\n" + "\n".join(
        ln.rstrip() for ln in buf.getvalue().splitlines() if ln.strip()
    )


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), or the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> str:
    """What training numbers depend on beyond the seed: the processor (its vendor's kernels sum in
    another order), the CPU capability (AVX2, AVX512) and the thread count."""
    import torch

    return (
        f"torch {torch.__version__}, {cpu_model()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads"
    )


def timings(root: Path, stages: list[str]) -> str:
    """Seconds per finished stage of the pipeline (`stages`, in its order; the state a stage the
    file no longer has left in ROOT/_pipeline is not shown) with the load average when it ended,
    and the environment."""
    found = [root / "_pipeline" / f"{name}.json" for name in stages]
    states = [json.loads(p.read_text()) for p in found if p.is_file()]
    rows = [f"{s['stage']:<13} {s['seconds']:>7.1f} s   load average {s.get('load_average_1min', '?')}" for s in states]
    total = sum(s["seconds"] for s in states)
    return "\n".join(
        rows
        + [
            f"{'total':<13} {total:>7.1f} s   (load average: runnable processes over the last minute)",
            f"on {environment()}",
        ]
    )


def render(readme: str, root: Path, pipeline: Path, shown: str = SHOWN_ROOT) -> str:
    commands = stage_commands(pipeline, shown)

    def block(m: re.Match) -> str:
        body = "\n\n".join(render_item(i, root, commands, shown) for i in m.group(1).split(";"))
        return f"<!-- figures: {m.group(1)} -->\n```\n{body}\n```\n"

    return MARKER.sub(block, readme)


def masked(text: str) -> str:
    """`text` without what changes from run to run: the timings block, seconds and rates."""
    text = MARKER.sub(lambda m: m.group(0) if "timings" not in m.group(1) else "<timings>\n", text)
    return VOLATILE.sub("#", text)


def recorded_environment(readme: str) -> str | None:
    m = re.search(r"^on (torch .*)$", readme, re.M)
    return m.group(1) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=SHOWN_ROOT, help="run root of pipelines/toy.yaml (default out/demo)")
    ap.add_argument("--readme", default=str(REPO / "examples" / "README.md"))
    ap.add_argument("--pipeline", default=str(REPO / "pipelines" / "toy.yaml"))
    ap.add_argument("--check", action="store_true", help="compare instead of writing (timings masked)")
    a = ap.parse_args(argv)
    readme = Path(a.readme)
    old = readme.read_text()
    new = render(old, Path(a.root), Path(a.pipeline))
    if a.check:
        if masked(old) == masked(new):
            print(f"{readme}: figures match {a.root}")
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                masked(old).splitlines(True), masked(new).splitlines(True), str(readme), f"from {a.root}"
            )
        )
        return 1
    readme.write_text(new)
    print(f"wrote {readme} from {a.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
