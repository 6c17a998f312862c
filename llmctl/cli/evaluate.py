"""Commands: llmctl eval (issue 7). Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.app import ConfigOpt, OverwriteOpt, SetOpt, app


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="An llmctl checkpoint (or run dir) or a Hugging Face model directory.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Results dataset directory to write.")],
    task: Annotated[
        Optional[list[str]],
        typer.Option(
            "--task",
            "-t",
            help="perplexity | mc | exact_match | degeneration | contamination | prefs | winrate (repeatable).",
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
        Optional[int], typer.Option("--shots", help="mc: few-shot examples per question (default 0).")
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
            "--prompts", help="degeneration and winrate: JSONL prompts (or a documents dataset for degeneration)."
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
        Optional[str], typer.Option("--baseline", help="winrate: the model MODEL is compared with.")
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
    from llmctl import config as C
    from llmctl.cli.common import out, print_results
    from llmctl.eval.runner import EvalConfig, run_eval

    flags = {
        "tasks": task,
        "perplexity.data": ppl_data,
        "mc.data": mc_data,
        "mc.shots": shots,
        "mc.choices": choices,
        "exact_match.data": em_data,
        "degeneration.prompts": prompts,
        "winrate.prompts": prompts,
        "prefs.data": prefs_data,
        "contamination.data": items,
        "contamination.train": train_data,
        "prefs.reward_model": reward_model,
        "winrate.reward_model": reward_model,
        "winrate.baseline": baseline,
        "batch_size": batch_size,
        "tokenizer": tokenizer,
        "device": device,
    }
    if limit is not None:  # every task's limit, except one a --set names (--limit 20 --set prefs.limit=0)
        named = C.parse_set(set_)
        flags.update(
            {
                f"{t}.limit": limit
                for t in ("perplexity", "mc", "exact_match", "degeneration", "contamination", "prefs", "winrate")
                if "limit" not in named.get(t, {})
            }
        )
    cfg = C.load(EvalConfig, config, set_, flags)
    m = run_eval(model, output, cfg, overwrite=overwrite)
    print_results(m["stats"]["results"])
    t = m["timings"]
    out.print(f"results -> {output} ({t.get('seconds', '?')} s)", markup=False, highlight=False)
