"""Perplexity and bits per byte on a token dataset's val split or on a document dataset.

Per document, the scored tokens are the document's ids (a token dataset's ids as stored, ending
with <|eos|>; a document's text encoded without BOS/EOS), each predicted from what precedes it,
with one `prefix` token before the first (default <|eos|>: llmctl models are trained on documents
separated by <|eos|> and never see BOS; lm-eval's `loglikelihood_rolling` uses BOS when the
tokenizer has one).

Long documents: windows of at most the model's context L; after the first, each window scores
the next `stride` tokens with the L - stride tokens before them as context (the Hugging Face
perplexity recipe). stride = L reproduces lm-eval's disjoint rolling windows and is fastest;
stride = L/2 (default) costs ~2x the compute and gives every scored token >= L/2 of context:
on benchmarks/eval_parity.py's model (context 256, documents ~3x longer) it measures 1.642
bits/byte against 1.660 with disjoint windows (BOS prefix), 1.1% lower.

Metrics: loss = sum NLL / tokens (nats), perplexity = exp(loss), bits_per_byte = sum NLL /
(UTF-8 bytes of the text) / ln 2. Loss and perplexity depend on the tokenizer (a vocabulary with
longer tokens has fewer, harder predictions); bits per byte does not, so it is the number to compare
across models with different tokenizers. The stderr of the loss is the per-token standard
deviation / sqrt(tokens) (tokens treated as independent: a lower bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmctl.errors import UsageError
from llmctl.eval.lm import LM

TASK = "perplexity"


@dataclass
class PerplexityConfig:
    data: str = ""  # a token dataset (stage "tokens": its `split` rows are used) or any dataset with `text`
    split: str = "val"
    limit: int = 0  # documents (0 = all)
    stride: int = 0  # tokens scored per window after the first (0 = half the context)
    context: int = 0  # window length (0 = the model's max_seq_len)
    prefix: str = "eos"  # token before each document: eos | bos | none


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(a, s, e) over seq = [prefix] + doc: input seq[a:e-1] scores targets seq[s:e] (indices 1..n)."""
    if context < 1 or stride < 1 or stride > context:
        raise UsageError(f"need 1 <= stride ({stride}) <= context ({context})")
    out, s = [], 1
    end = n_tokens + 1
    while s < end:
        e = min(end, s + (context if s == 1 else stride))
        out.append((max(0, e - 1 - context), s, e))
        s = e
    return out


def load_documents(lm: LM, cfg: PerplexityConfig) -> tuple[list[list[int]], list[int], dict[str, Any]]:
    """Token ids and UTF-8 byte counts per document, and the dataset's lineage."""
    from llmctl.datasets import Dataset

    if not cfg.data:
        raise UsageError("perplexity needs a dataset: --ppl-data DIR (a token dataset or a documents dataset)")
    ds = Dataset.open(cfg.data)
    docs: list[list[int]] = []
    nbytes: list[int] = []
    if "input_ids" in ds.column_names:
        toks = [i.get("fingerprint") for i in ds.manifest.get("inputs", []) if i.get("stage") == "tokenizer"]
        if lm.codec.fingerprint and toks and lm.codec.fingerprint not in toks:
            raise UsageError(f"{cfg.data}: was encoded with another tokenizer than the model's; "
                             "score a documents dataset instead")
        cols = ["input_ids"] + (["split"] if "split" in ds.column_names else [])
        for row in ds.iter_rows(cols):
            if "split" in row and row["split"] != cfg.split:
                continue
            ids = [int(i) for i in row["input_ids"]]
            docs.append(ids)
            nbytes.append(len(lm.codec.decode(ids).encode("utf-8")))
            if cfg.limit and len(docs) >= cfg.limit:
                break
    elif "text" in ds.column_names:
        for row in ds.iter_rows(["text"]):
            if not row["text"]:
                continue
            docs.append(lm.codec.encode(row["text"]))
            nbytes.append(len(row["text"].encode("utf-8")))
            if cfg.limit and len(docs) >= cfg.limit:
                break
    else:
        raise UsageError(f"{cfg.data}: has neither an input_ids nor a text column")
    if not docs:
        raise UsageError(f"{cfg.data}: no documents to score (split {cfg.split!r})")
    return docs, nbytes, ds.lineage()


def run(lm: LM, cfg: PerplexityConfig, batch_size: int, progress: Any = None) -> tuple[list[dict[str, Any]], list]:
    docs, nbytes, lineage = load_documents(lm, cfg)
    context = min(cfg.context or lm.max_len, lm.max_len)
    stride = cfg.stride or max(1, context // 2)
    prefix = {"eos": lm.codec.eos_id, "bos": getattr(lm.codec, "bos_id", None), "none": None}.get(cfg.prefix, -1)
    if prefix == -1:
        raise UsageError(f"perplexity.prefix must be eos, bos or none, got {cfg.prefix!r}")
    inputs, targets = [], []
    for ids in docs:
        seq = ([prefix] if prefix is not None else []) + ids
        n = len(seq) - 1
        if n < 1:
            continue
        for a, s, e in windows(n, context, stride):
            inputs.append(seq[a:e - 1])
            targets.append(seq[s:e])
    if progress:
        progress.start(TASK, len(inputs))
    scored = lm.score(inputs, targets, batch_size, progress.advance if progress else None)
    nll = [-v for vals, _ in scored for v in vals]
    n_tok = len(nll)
    total = math.fsum(nll)
    loss = total / n_tok
    var = math.fsum((x - loss) ** 2 for x in nll) / max(1, n_tok - 1)
    n_bytes = sum(nbytes)
    rows = [
        {"task": TASK, "metric": "loss", "value": loss, "stderr": math.sqrt(var / n_tok), "n": n_tok},
        {"task": TASK, "metric": "perplexity", "value": math.exp(loss), "stderr": None, "n": n_tok},
        {"task": TASK, "metric": "bits_per_byte", "value": total / n_bytes / math.log(2), "stderr": None, "n": n_bytes},
        {"task": TASK, "metric": "documents", "value": float(len(docs)), "stderr": None, "n": len(docs)},
    ]
    return rows, [lineage]
