"""Commands: llmctl eval. Registered on the shared app by importing this module; the task names and
the task options a shared flag sets come from the registry `llmctl.eval.tasks.TASKS`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl import config as C
from llmctl.cli.app import ConfigOpt, OverwriteOpt, SetOpt, app
from llmctl.cli.common import out, print_results
from llmctl.eval.tasks import TASKS, tasks_with_flag


def _names(flag: str) -> str:
    """'a', 'a and b', 'a, b and c': the tasks a shared flag feeds, for its help."""
    names = tasks_with_flag(flag)
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="An llmctl checkpoint (or run dir) or a Hugging Face model directory.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Results dataset directory to write.")],
    task: Annotated[
        Optional[list[str]],
        typer.Option(
            "--task",
            "-t",
            help=" | ".join(t for t in TASKS if t != "lm_eval")
            + " | lm-eval:NAME[,NAME...] (lm-evaluation-harness tasks) (repeatable).",
        ),
    ] = None,
    ppl_data: Annotated[
        Optional[str],
        typer.Option("--ppl-data", help="perplexity: a token dataset (its val split) or a documents dataset."),
    ] = None,
    mc_data: Annotated[
        Optional[str],
        typer.Option(
            "--mc-data", help="mc: MMLU-layout CSV, a directory of them, JSONL or Parquet (e.g. examples/eval/mmlu)."
        ),
    ] = None,
    shots: Annotated[
        Optional[int],
        typer.Option(
            "--shots", help="mc and lm-eval: few-shot examples per question (mc default 0; lm-eval: the task's)."
        ),
    ] = None,
    choices: Annotated[
        Optional[str],
        typer.Option(
            "--choices", help="mc: continuations are the letters (' A') or the choice texts (default letters)."
        ),
    ] = None,
    em_data: Annotated[
        Optional[str],
        typer.Option("--em-data", help="exact_match: GSM8K-layout JSONL (e.g. examples/eval/gsm8k_test.jsonl)."),
    ] = None,
    prompts: Annotated[
        Optional[str],
        typer.Option(
            "--prompts", help=f"{_names('--prompts')}: JSONL prompts (or a documents dataset for degeneration)."
        ),
    ] = None,
    prefs_data: Annotated[
        Optional[str],
        typer.Option("--prefs-data", help="prefs: preference pairs (a `data import --format prefs` dataset or JSONL)."),
    ] = None,
    items: Annotated[
        Optional[str],
        typer.Option("--items", help="contamination: the eval items to look for (MMLU CSV/dir or JSONL)."),
    ] = None,
    train_data: Annotated[
        Optional[str], typer.Option("--train-data", help="contamination: the training dataset to search.")
    ] = None,
    reward_model: Annotated[
        Optional[str],
        typer.Option(
            "--reward-model", help="prefs/winrate: reward model dir (for prefs, MODEL itself when not given)."
        ),
    ] = None,
    baseline: Annotated[
        Optional[str], typer.Option("--baseline", help="winrate and judge: the model MODEL is compared with.")
    ] = None,
    judge: Annotated[
        Optional[str],
        typer.Option("--judge", help="judge: the judging model (llmctl checkpoint or HF dir), in process."),
    ] = None,
    judge_url: Annotated[
        Optional[str],
        typer.Option(
            "--judge-url", help="judge: an OpenAI-compatible server judging instead (key from $OPENAI_API_KEY)."
        ),
    ] = None,
    judge_model: Annotated[
        Optional[str], typer.Option("--judge-model", help="judge: the model name sent to --judge-url.")
    ] = None,
    judge_prompt: Annotated[
        Optional[str],
        typer.Option(
            "--judge-prompt",
            help="judge: the judge prompt file (default llmctl/eval/judge_prompt.txt; keep its three placeholders).",
        ),
    ] = None,
    chat: Annotated[
        Optional[bool],
        typer.Option(
            "--chat",
            help="mc, exact_match, lm-eval: the model's chat template, shots as earlier turns, the answer as its reply (lm-eval's --apply_chat_template --fewshot_as_multiturn).",
        ),
    ] = None,
    lm_eval_include: Annotated[
        Optional[str],
        typer.Option("--lm-eval-include", help="lm-eval: a folder of lm-eval task YAMLs (lm-eval's --include_path)."),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help="At most this many items per task (mc: per subject file); a --set TASK.limit=N overrides it for that task.",
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", "-b", min=1, help="Sequences per forward pass (does not change results; default 8)."
        ),
    ] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option("--tokenizer", help="Tokenizer dir overriding the checkpoint's.")
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, mps (default cpu).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Evaluate a model on several tasks, loading it once; writes a results dataset and prints a table.

    The results dataset has one row per (task, metric): value, stderr, n. Other task options go
    through --set, e.g. --set perplexity.stride=128 --set degeneration.temperature=0.7.
    """
    from llmctl.eval.runner import EvalConfig, run_eval  # torch: kept out of --help

    shared = {
        "--ppl-data": ppl_data,
        "--mc-data": mc_data,
        "--shots": shots,
        "--choices": choices,
        "--em-data": em_data,
        "--prompts": prompts,
        "--prefs-data": prefs_data,
        "--items": items,
        "--train-data": train_data,
        "--reward-model": reward_model,
        "--baseline": baseline,
        "--lm-eval-include": lm_eval_include,
        "--chat": chat,
        "--judge": judge,
        "--judge-url": judge_url,
        "--judge-model": judge_model,
        "--judge-prompt": judge_prompt,
    }
    flags = {"tasks": task, "batch_size": batch_size, "tokenizer": tokenizer, "device": device}
    flags.update({f"{t.name}.{option}": shared[flag] for t in TASKS.values() for flag, option in t.flags})
    if limit is not None:  # every task's limit, except one a --set names (--limit 20 --set prefs.limit=0)
        named = C.parse_set(set_)
        flags.update({f"{t}.limit": limit for t in TASKS if "limit" not in named.get(t, {})})
    cfg = C.load(EvalConfig, config, set_, flags)
    m = run_eval(model, output, cfg, overwrite=overwrite)
    print_results(m["stats"]["results"])
    if m["stats"].get("core_tasks"):
        out.print(
            f"core: centred accuracy averaged over {', '.join(m['stats']['core_tasks'])}", markup=False, highlight=False
        )
    t = m["timings"]
    out.print(f"results -> {output} ({t.get('seconds', '?')} s)", markup=False, highlight=False)
