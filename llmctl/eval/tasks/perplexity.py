"""Perplexity and bits per byte on a token dataset's val split or on a document dataset.

Each document (a token dataset's ids as stored; a text encoded without BOS/EOS) is scored after one
`prefix` token (`bos`: the tokenizer's BOS, else its EOS, as lm-eval's `prefix_token_id`). Windows
are lm-evaluation-harness's `loglikelihood_rolling` (disjoint windows of the context L) by default,
or, with `stride` < L, sliding windows that score `stride` new tokens each (`prefix=eos`,
`stride=L/2` fits llmctl models, which never see BOS: docs/eval.md). Metrics: `loss` (nats/token),
`perplexity`, `bits_per_byte`, `byte_perplexity`, `word_perplexity` (lm-eval's), `documents`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.eval.base import Samples
from llmctl.eval.lm import LM
from llmctl.store.dataset import Dataset

TASK = "perplexity"


@dataclass
class PerplexityConfig:
    data: str = ""  # a token dataset (stage "tokens": its `split` rows are used) or any dataset with `text`
    split: str = "val"
    limit: int = 0  # documents (0 = all)
    stride: int = 0  # tokens scored per window after the first (0 = the context: lm-eval's disjoint windows)
    context: int = 0  # window length (0 = the model's max_seq_len)
    prefix: str = "bos"  # token before each document: bos (lm-eval) | eos (what llmctl models are trained on) | none


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


def load_documents(lm: LM, cfg: PerplexityConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per document: id, text, token ids and UTF-8 bytes; and the dataset's lineage."""
    if not cfg.data:
        raise UsageError("perplexity needs a dataset: --ppl-data DIR (a token dataset or a documents dataset)")
    ds = Dataset.open(cfg.data)
    docs: list[dict[str, Any]] = []
    has_id = "id" in ds.column_names
    if "input_ids" in ds.column_names:
        toks = [i.get("fingerprint") for i in ds.manifest.get("inputs", []) if i.get("stage") == "tokenizer"]
        if lm.codec.fingerprint and toks and lm.codec.fingerprint not in toks:
            raise UsageError(
                f"{cfg.data}: was encoded with another tokenizer than the model's; score a documents dataset instead"
            )
        cols = ["input_ids"] + (["split"] if "split" in ds.column_names else []) + (["id"] if has_id else [])
        for row in ds.iter_rows(cols):
            if "split" in row and row["split"] != cfg.split:
                continue
            ids = [int(i) for i in row["input_ids"]]
            text = lm.codec.decode(ids)
            docs.append(
                {"id": str(row.get("id", len(docs))), "text": text, "ids": ids, "bytes": len(text.encode("utf-8"))}
            )
            if cfg.limit and len(docs) >= cfg.limit:
                break
    elif "text" in ds.column_names:
        for row in ds.iter_rows(["text"] + (["id"] if has_id else [])):
            if not row["text"]:
                continue
            docs.append(
                {
                    "id": str(row.get("id", len(docs))),
                    "text": row["text"],
                    "ids": lm.codec.encode(row["text"]),
                    "bytes": len(row["text"].encode("utf-8")),
                }
            )
            if cfg.limit and len(docs) >= cfg.limit:
                break
    else:
        raise UsageError(f"{cfg.data}: has neither an input_ids nor a text column")
    if not docs:
        raise UsageError(f"{cfg.data}: no documents to score (split {cfg.split!r})")
    return docs, ds.lineage()


SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("tokens", pa.int64()),
        ("bytes", pa.int64()),
        ("words", pa.int64()),
        ("windows", pa.int64()),
        ("loglikelihood", pa.float64()),
    ]
)


def run(
    lm: LM, cfg: PerplexityConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list, Samples]:
    docs, lineage = load_documents(lm, cfg)
    context = min(cfg.context or lm.max_len, lm.max_len)
    stride = cfg.stride or context
    bos = lm.codec.bos_id if lm.codec.bos_id is not None else lm.codec.eos_id  # lm-eval's prefix_token_id
    prefix = {"eos": lm.codec.eos_id, "bos": bos, "none": None}.get(cfg.prefix, -1)
    if prefix == -1:
        raise UsageError(f"perplexity.prefix must be bos, eos or none, got {cfg.prefix!r}")
    inputs, targets, owner = [], [], []
    for k, doc in enumerate(docs):
        seq = ([prefix] if prefix is not None else []) + doc["ids"]
        n = len(seq) - 1
        doc["windows"] = 0
        if n < 1:
            continue
        for a, s, e in windows(n, context, stride):
            inputs.append(seq[a : e - 1])
            targets.append(seq[s:e])
            owner.append(k)
            doc["windows"] += 1
    if progress:
        progress.start(TASK, len(inputs))
    scored = lm.score(inputs, targets, batch_size, progress.advance if progress else None)
    per_doc: list[list[float]] = [[] for _ in docs]
    for k, (vals, _) in zip(owner, scored):
        per_doc[k] += vals
    nll = [-v for vals in per_doc for v in vals]
    n_tok = len(nll)
    if not n_tok:
        raise UsageError(f"{cfg.data}: no token to score (documents of one token with perplexity.prefix=none)")
    total = math.fsum(nll)
    loss = total / n_tok
    var = math.fsum((x - loss) ** 2 for x in nll) / max(1, n_tok - 1)
    n_bytes = sum(d["bytes"] for d in docs)
    words = [len(re.split(r"\s+", d["text"])) for d in docs]
    samples = [
        {
            "id": d["id"],
            "text": d["text"],
            "tokens": len(v),
            "bytes": d["bytes"],
            "words": w,
            "windows": d["windows"],
            "loglikelihood": math.fsum(v),
        }
        for d, v, w in zip(docs, per_doc, words)
    ]
    rows = [
        {"task": TASK, "metric": "loss", "value": loss, "stderr": math.sqrt(var / n_tok), "n": n_tok},
        {"task": TASK, "metric": "perplexity", "value": math.exp(loss), "stderr": None, "n": n_tok},
        {"task": TASK, "metric": "bits_per_byte", "value": total / n_bytes / math.log(2), "stderr": None, "n": n_bytes},
        {"task": TASK, "metric": "byte_perplexity", "value": math.exp(total / n_bytes), "stderr": None, "n": n_bytes},
        {
            "task": TASK,
            "metric": "word_perplexity",
            "value": math.exp(total / sum(words)),
            "stderr": None,
            "n": sum(words),
        },
        {"task": TASK, "metric": "documents", "value": float(len(docs)), "stderr": None, "n": len(docs)},
    ]
    return rows, [lineage], Samples(SAMPLES_SCHEMA, samples)
