"""Commands: llmctl tokenize train | encode | inspect. Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from llmctl import config as C
from llmctl.cli.app import ConfigOpt, ExecutorOpt, OverwriteOpt, RayAddressOpt, SetOpt, WorkersOpt, app
from llmctl.cli.common import human_bytes, out
from llmctl.cli.help import LlmctlGroup

tokenize_app = typer.Typer(
    cls=LlmctlGroup,
    help="Train a BPE tokenizer on documents, encode documents to token shards, inspect it.",
    no_args_is_help=True,
)
app.add_typer(tokenize_app, name="tokenize")


@tokenize_app.command("train")
def train_cmd(
    datasets: Annotated[list[str], typer.Argument(help="Documents datasets (any llmctl dataset with a text column).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Tokenizer directory to write: a local path or an fsspec URI.")
    ],
    vocab_size: Annotated[
        Optional[int],
        typer.Option("--vocab-size", "-v", help="Vocabulary size, special and byte tokens included (default 8192)."),
    ] = None,
    sample_bytes: Annotated[
        Optional[int],
        typer.Option("--sample-bytes", help="Bytes of text sampled evenly across shards (default 100 MB)."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the sample.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", "-w", min=1, help="sentencepiece trainer threads (default: all cores)."),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a sentencepiece BPE tokenizer (byte fallback, split digits, chat special tokens).

    Writes OUT/tokenizer.model, OUT/llmctl_tokenizer.json, Hugging Face tokenizer_config.json and
    special_tokens_map.json, and OUT/_manifest.json. The same command on a finished OUT does nothing.
    """
    from llmctl.data.tokenize import TokenizerTrainConfig, run_train  # pyarrow: kept out of --help

    cfg = C.load(
        TokenizerTrainConfig,
        config,
        set_,
        {"vocab_size": vocab_size, "sample_bytes": sample_bytes, "seed": seed, "workers": workers},
    )
    m = run_train(datasets, output, cfg, overwrite=overwrite)
    s, t = m["stats"]["sample"], m["timings"]
    out.print(
        f"trained a {m['stats']['vocab_size']:,}-token BPE vocabulary on {s['documents']:,} documents "
        f"({human_bytes(s['bytes'])} of {human_bytes(s['input_bytes'])}) in {t.get('train_seconds', '?')} s; "
        f"{s['bytes_per_token']} bytes/token on the sample -> {output}"
    )


@tokenize_app.command("encode")
def encode_cmd(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Documents dataset (any llmctl dataset with a text column; a local path or an fsspec URI)."
        ),
    ],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Tokenizer directory (from `tokenize train`).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Output token dataset directory: a local path or an fsspec URI.")
    ],
    val_fraction: Annotated[
        Optional[float],
        typer.Option("--val-fraction", help="Share of documents in the val split, by id hash (default 0.01)."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split hash.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Encode documents to a token dataset: id, input_ids (ending with <|eos|>), split.

    One output shard per input shard; re-running the same command resumes an interrupted run.
    """
    from llmctl.data.tokenize import SPLITS, EncodeConfig, run_encode  # pyarrow: kept out of --help

    cfg = C.load(
        EncodeConfig,
        config,
        set_,
        {
            "val_fraction": val_fraction,
            "seed": seed,
            "workers": workers,
            "executor": executor,
            "ray_address": ray_address,
        },
    )
    m = run_encode(dataset, tokenizer, output, cfg, overwrite=overwrite)
    st = m["stats"]
    table = Table(title="tokens", title_justify="left")
    for col in ("split", "documents", "tokens", "bytes", "bytes/token"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for s in SPLITS:
        r = st[s]
        table.add_row(s, f"{r['documents']:,}", f"{r['tokens']:,}", human_bytes(r["bytes"]), str(r["bytes_per_token"]))
    out.print(table)
    t = m["timings"]
    secs = t.get("run_seconds", t["seconds"])
    rate = f", {st['bytes'] / 1e6 / secs:.1f} MB/s" if secs and t.get("resumed_tasks", 0) == 0 else ""
    out.print(
        f"wrote {st['tokens']:,} tokens for {st['documents']:,} documents in {len(m['shards'])} shards "
        f"to {output} ({secs} s{rate})"
    )


@tokenize_app.command("inspect")
def inspect_cmd(
    tokenizer: Annotated[str, typer.Argument(help="Tokenizer directory.")],
    text: Annotated[Optional[str], typer.Argument(help="Text to tokenize (omit to describe the tokenizer).")] = None,
) -> None:
    """Show a tokenizer's vocabulary and special tokens, or the pieces and ids of TEXT."""
    from llmctl.tokenizer.spm import Tokenizer  # pyarrow, sentencepiece: kept out of --help

    tok = Tokenizer.load(tokenizer)
    if text is None:
        out.print(f"{tokenizer}: sentencepiece BPE, {tok.vocab_size:,} tokens (byte fallback, split digits)")
        out.print("special: " + ", ".join(f"{k}={v}" for k, v in tok.special_ids.items()), markup=False)
        return
    ids = tok.encode(text)
    table = Table(title=f"{len(ids)} tokens, {len(text.encode('utf-8', 'replace'))} bytes", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id", justify="right")
    table.add_column("piece")
    for k, i in enumerate(ids):
        table.add_row(str(k), str(i), Text(repr(tok.id_to_piece(i))))
    out.print(table, markup=False)
    out.print("ids: " + " ".join(map(str, ids)), markup=False)
    n = len(text.encode("utf-8", "replace"))
    out.print(f"{n / max(len(ids), 1):.2f} bytes/token; round trip {'ok' if tok.decode(ids) == text else 'DIFFERS'}")
