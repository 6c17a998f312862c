"""Commands: llmctl quality annotate / train / predict (LLM grades and the fastText quality classifier)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from llmctl import config as C
from llmctl.cli.app import ConfigOpt, OverwriteOpt, SetOpt, app
from llmctl.cli.common import out
from llmctl.cli.help import LlmctlGroup

quality_app = typer.Typer(
    cls=LlmctlGroup,
    help="The fastText quality classifier (GPT-3 style: reference text vs raw crawl).",
    no_args_is_help=True,
)
app.add_typer(quality_app, name="quality")


@quality_app.command("train")
def train_cmd(
    output: Annotated[str, typer.Option("--output", "-o", help="Model directory (model.bin + _manifest.json).")],
    graded: Annotated[
        Optional[list[str]],
        typer.Argument(help="Graded datasets from `llmctl quality annotate` (instead of --positive/--negative)."),
    ] = None,
    positive: Annotated[
        Optional[list[str]],
        typer.Option(
            "--positive",
            "-p",
            help="Datasets or .jsonl[.gz]/.parquet/.txt files of positive text (label hq, or --label).",
        ),
    ] = None,
    negative: Annotated[
        Optional[list[str]],
        typer.Option("--negative", "-n", help="Datasets or files of negative text (raw crawl for a quality model)."),
    ] = None,
    target: Annotated[Optional[str], typer.Option(help="Graded input: the grade column (default grade).")] = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="Graded input: grade >= this is positive (hq), below negative (default 3).")
    ] = None,
    head: Annotated[
        Optional[str],
        typer.Option(
            help="Graded input: classes (score = expected grade, default), ridge (regression on sentence vectors) or binary (P(grade >= threshold))."
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    holdout: Annotated[Optional[float], typer.Option(help="Held-out fraction of each side (default 0.2).")] = None,
    epoch: Annotated[Optional[int], typer.Option(help="fastText epochs (default 25).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="fastText learning rate (default 0.5).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split and of fastText.")] = None,
    label: Annotated[
        Optional[str],
        typer.Option(help="Positive label (default hq): toxic, nsfw, code, ...; the negative is not_LABEL."),
    ] = None,
    text_field: Annotated[
        Optional[str], typer.Option(help="Text column of JSONL/Parquet inputs (default text).")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a fastText classifier and print precision, recall and F1 on a seeded held-out split.

    A quality model by default (hq vs lq); with --label, a classifier for any label, which
    `llmctl filter --quality-model DIR` applies (--quality-keep below drops high scores). Given
    GRADED datasets (FineWeb-Edu's recipe), it predicts the grade (--head classes or ridge; `llmctl
    filter --quality-threshold 3` then keeps a predicted grade >= 3) or, with --head binary, the
    probability of grade >= --threshold; it also prints the Spearman correlation of its score with
    the held-out grades."""
    from llmctl.data.quality import QualityTrainConfig, train_quality  # numpy, pyarrow: kept out of --help

    cfg = C.load(
        QualityTrainConfig,
        config,
        set_,
        {
            "holdout": holdout,
            "epoch": epoch,
            "lr": lr,
            "seed": seed,
            "label": label,
            "text_field": text_field,
            "target": target,
            "grade_threshold": threshold,
            "head": head,
        },
    )
    if bool(graded) == bool(positive or negative):
        raise typer.BadParameter("give GRADED datasets, or --positive and --negative")
    m = train_quality(positive or [], negative or [], output, cfg, overwrite=overwrite, graded=graded)
    s = m["stats"]
    h = s["heldout"]
    (p, n_train), (n, m_train) = s["train_docs"].items()
    (_, n_held_p), (_, n_held_n) = s["heldout_docs"].items()
    out.print(
        f"trained on {n_train:,} {p} + {m_train:,} {n} documents "
        f"({s['duplicates_dropped']:,} duplicates dropped), vocabulary {s['vocabulary']:,}"
    )
    out.print(
        f"held out {n_held_p:,} {p} + {n_held_n:,} {n}: precision {h['precision']:.3f} "
        f"recall {h['recall']:.3f} F1 {h['f1']:.3f} accuracy {h['accuracy']:.3f}"
        + (f" Spearman {h['spearman']}" if "spearman" in h else "")
        + (f" MAE {h['mae']}" if "mae" in h else "")
    )
    if "grade_head" in s:
        g = s["grade_head"]
        out.print(f"scores are predicted grades ({g['head']} head); accuracy at grade {g['threshold']:g}")
    out.print(f"wrote {output}/model.bin and {output}/_manifest.json")


@quality_app.command("predict")
def predict_cmd(
    model: Annotated[str, typer.Argument(help="Model directory from `llmctl quality train`.")],
    texts: Annotated[
        list[str], typer.Argument(help="Texts to score, or '-' to read one document per line from stdin.")
    ],
) -> None:
    """Print the score of each text: the probability of the model's label (hq), or the predicted grade of a grade model."""
    from llmctl.data.quality import load_model, score_texts  # numpy, pyarrow: kept out of --help

    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin]
    for score, text in zip(score_texts(load_model(model), texts), texts):
        out.print(f"{score:.4f}\t{text[:70]!r}", soft_wrap=True)


@quality_app.command("annotate")
def annotate_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Documents: llmctl datasets, .jsonl[.gz] or .parquet files.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Grades dataset directory.")],
    judge_url: Annotated[
        Optional[str],
        typer.Option(help="OpenAI-compatible server of the judge (http://127.0.0.1:8000/v1): POST /chat/completions."),
    ] = None,
    judge: Annotated[
        Optional[str],
        typer.Option(
            help="The judge: a local model (llmctl checkpoint, run dir or Llama HF dir) run in this process; with --judge-url, its name on that server."
        ),
    ] = None,
    prompt: Annotated[
        Optional[str], typer.Option(help="Grading prompt file with {text} (default: llmctl's annotate_prompt.txt).")
    ] = None,
    sample: Annotated[Optional[int], typer.Option(help="Documents to grade, a seeded sample (default: all).")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Requests in flight (default 4).")] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="A local judge: documents graded in one batched generation (default 8).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Grade documents 0-5 with a judge model (FineWeb-Edu's recipe); re-running resumes.

    The judge is a local model (--judge MODEL: greedy, batched generation in this process) or an
    OpenAI-compatible server (--judge-url URL --judge NAME). Writes a dataset of id, text, grade
    (null when the answer gives none), answer and judge."""
    from llmctl.data.annotate import AnnotateConfig, annotate  # pyarrow: kept out of --help

    flags = {
        "judge_url": judge_url,
        "judge": judge,
        "prompt": prompt,
        "sample": sample,
        "concurrency": concurrency,
        "batch_size": batch_size,
    }
    cfg = C.load(AnnotateConfig, config, set_, flags)
    local = LocalJudge(cfg.judge, cfg.max_tokens, cfg.batch_size) if cfg.judge and not cfg.judge_url else None
    m = annotate(inputs, output, cfg, overwrite=overwrite, judge=local)
    s = m["stats"]
    grades = " ".join(f"{g}:{n}" for g, n in s["grades"].items())
    out.print(
        f"graded {s['graded']:,} of {s['sampled']:,} documents ({grades}); "
        f"{s['unparsed']:,} answers without a grade ({s['resumed_answers']:,} answers from an earlier run)"
    )
    out.print(f"wrote {output}")


class LocalJudge:
    """A judge model run in this process (annotate's GradingJudge): an llmctl checkpoint, run dir
    or Llama HF directory (llmctl.serve.load), asked with greedy batched generation
    (llmctl.model.generate.generate_batch) in batches of `batch_size` documents.

    The prompt is one user turn in the model's chat template when it has one, else plain text;
    a prompt longer than the context less `max_tokens` (at least half the context) keeps its last
    tokens, where the grading instruction is."""

    def __init__(self, path: str, max_tokens: int, batch_size: int):
        import torch  # torch: kept out of --help

        from llmctl.serve.load import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.codec, self.where = load_model(path, device=device)
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.last_error = ""

    def _ids(self, prompt: str) -> list[int]:
        ids = self.codec.chat([{"role": "user", "content": prompt}]) if self.codec.chat else self.codec.encode(prompt)
        ctx = self.model.cfg.max_seq_len
        return (ids or [self.codec.eos_id])[-max(ctx // 2, ctx - self.max_tokens) :]

    def answers(self, prompts: list[str]):
        from llmctl.model.generate import generate_batch  # torch: kept out of --help

        for start in range(0, len(prompts), self.batch_size):
            batch = [self._ids(p) for p in prompts[start : start + self.batch_size]]
            done = generate_batch(self.model, batch, self.max_tokens, temperature=0.0, stop_ids=self.codec.stop_ids)
            yield from (self.codec.decode(t) for t in done.tokens)
