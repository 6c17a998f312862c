"""The mixture plan: which documents of which token datasets, in what order (`llmctl mix`, `pretrain --mix`).

A mixture is a table of sources (token datasets made with one tokenizer), each with a weight
(its share of the training tokens) or a fixed number of epochs, and a budget of training tokens.
The plan is computed from document lengths only, in one process, so the materialized mix
(llmctl.data.mix) and the streamed one (llmctl.train.mix_batches) follow the very same order,
whatever the worker count.

Rules (what OLMo's and NeMo Curator's blending users expect):
- weights are normalized to sum 1 (a notice when they did not); weight 0 drops a source; a source
  without a weight gets its size (natural proportion); with `temperature` T, p ~ w^(1/T)
  (T > 1 flattens the mixture towards small sources, as in XLM/mT5 sampling);
- `tokens`: the training-token budget, an integer (10M, 2.5B) or `largest` (one epoch of the
  largest weighted source); sources with fixed epochs take their tokens first, the weighted ones
  share the rest;
- a weighted source that would need more than `max_epochs` passes is an error (default 1: no
  repetition without permission); fixed-epoch sources are their own permission;
- pass k over a source is its own seeded permutation of the documents (never the same document
  twice in a row across a pass boundary); a fractional last pass takes its permutation's prefix
  under the remaining tokens, then the next documents in that order that still fit (`_fill`), so a
  source lands within a few tokens of its target even with documents of thousands of tokens; when
  whole documents cannot come within 5% of it (a small target, long documents), a notice says so,
  and a target they would miss entirely (no document) is an error;
- sources are interleaved by progress: each document sits at the fraction of its source's tokens
  reached at its middle, so any prefix of the stream holds the sources in proportion;
- validation: every source's `val` documents exactly once (no up- or down-sampling, so a
  source's val loss is comparable across mixtures), interleaved the same way, after the train split.

Memory: document lengths and the plan, ~30 bytes per document (1B tokens of 500-token
documents: ~60 MB); token ids are never held here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from llmctl.config import runtime
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset, canonical_json, sha256_text
from llmctl.store.integrity import open_parquet

LARGEST = "largest"


@dataclass
class MixConfig:
    """Options of `llmctl mix` (and of the file `pretrain --mix` reads)."""

    sources: dict[str, Any] = field(default_factory=dict)  # name -> {path, weight | epochs}
    tokens: str = LARGEST  # training-token budget: an integer (10M, 2.5B) or "largest"
    temperature: float = 1.0  # p ~ w^(1/T)
    max_epochs: float = 1.0  # most passes a weighted source may take
    seed: int = 0
    shard_tokens: int = 4_000_000  # output shard size (documents are never split)
    workers: int | None = runtime(None)


_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_tokens(value: Any) -> int | None:
    """The budget in tokens; None for `largest`."""
    s = str(value).strip().lower().replace("_", "").replace(",", "")
    if s == LARGEST:
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([kmbgt]?)", s)
    if not m or float(m.group(1)) * _SUFFIX[m.group(2)] < 1:
        raise UsageError(f"--tokens: expected a positive number of tokens (10M, 2.5B) or 'largest', got {value!r}")
    return int(round(float(m.group(1)) * _SUFFIX[m.group(2)]))


def parse_source(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME=PATH[:WEIGHT | :EPOCHSx]` as given to --source."""
    name, eq, rest = spec.partition("=")
    if not eq or not name.strip() or not rest:
        raise UsageError(
            f"--source {spec!r}: expected NAME=PATH[:WEIGHT] or NAME=PATH:EPOCHSx (e.g. web=out/tokens:0.67)"
        )
    path, colon, amount = rest.rpartition(":")
    if not colon or not re.fullmatch(r"-?[0-9.e+-]+x?", amount):
        return name.strip(), {"path": rest}
    try:
        if amount.endswith("x"):
            return name.strip(), {"path": path, "epochs": float(amount[:-1])}
        return name.strip(), {"path": path, "weight": float(amount)}
    except ValueError:
        raise UsageError(f"--source {spec!r}: {amount!r} is not a number") from None


def apply_weights(sources: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--weight NAME=W` (or NAME=Nx for epochs) on top of a mix table; an unknown NAME is an error."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in sources.items()}
    for o in overrides:
        name, eq, val = o.partition("=")
        if not eq:
            raise UsageError(f"--weight {o!r}: expected NAME=WEIGHT or NAME=EPOCHSx")
        if name not in out:
            raise UsageError(f"--weight {o!r}: unknown source {name!r} (sources: {', '.join(out) or 'none'})")
        _, parsed = parse_source(f"{name}=_:{val}")
        if "path" in parsed and len(parsed) == 1:
            raise UsageError(f"--weight {o!r}: {val!r} is not a number")
        out[name] = {k: v for k, v in out[name].items() if k not in ("weight", "epochs")}
        out[name].update({k: v for k, v in parsed.items() if k != "path"})
    return out


# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One token dataset of the mixture, with the location and length of each document."""

    name: str
    ds: Dataset
    weight: float | None
    epochs: float | None
    tokenizer: dict[str, Any]
    shard: dict[str, np.ndarray]  # split -> shard index of each document (dataset order)
    row: dict[str, np.ndarray]  # split -> row inside its shard
    length: dict[str, np.ndarray]  # split -> tokens

    @property
    def tokens(self) -> int:
        return int(self.length["train"].sum())

    @property
    def docs(self) -> int:
        return len(self.length["train"])


def _tokenizer_of(ds: Dataset) -> dict[str, Any]:
    for i in ds.manifest.get("inputs", []):
        if i.get("stage") == "tokenizer":
            return i
    raise UsageError(f"{ds.path}: its manifest names no tokenizer (not made by `llmctl tokenize encode`?)")


def open_source(name: str, spec: Any) -> Source:
    """Read a source's document lengths per split (one shard at a time)."""
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict) or not spec.get("path"):
        raise UsageError(f"source {name!r}: needs a path (NAME: {{path: DIR, weight: W}})")
    unknown = sorted(set(spec) - {"path", "weight", "epochs"})
    if unknown:
        raise UsageError(f"source {name!r}: unknown key {unknown[0]!r} (keys: path, weight, epochs)")
    weight, epochs = spec.get("weight"), spec.get("epochs")
    if weight is not None and epochs is not None:
        raise UsageError(f"source {name!r}: give a weight or epochs, not both")
    for key, v in (("weight", weight), ("epochs", epochs)):
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or v != v):
            raise UsageError(f"source {name!r}: {key} must be a number >= 0, got {v!r}")
    ds = Dataset.open(spec["path"], stage="tokens", columns=["input_ids", "split"])
    ds.check_int_lists("input_ids")
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"train": [], "val": []}
    for i in range(len(ds.shards)):
        t = open_parquet(ds.verify(i)).read(columns=["input_ids", "split"])
        lens = pc.list_value_length(t.column("input_ids")).to_numpy().astype(np.int64)
        split = np.asarray(t.column("split").to_numpy(zero_copy_only=False))
        for s in parts:
            rows = np.flatnonzero(split == s).astype(np.int64)
            parts[s].append((np.full(len(rows), i, np.int32), rows, lens[rows]))
    cat = {
        s: [np.concatenate([p[k] for p in v]) if v else np.zeros(0, np.int64) for k in range(3)]
        for s, v in parts.items()
    }
    return Source(
        name,
        ds,
        None if weight is None else float(weight),
        None if epochs is None else float(epochs),
        _tokenizer_of(ds),
        {s: c[0] for s, c in cat.items()},
        {s: c[1] for s, c in cat.items()},
        {s: c[2] for s, c in cat.items()},
    )


def open_sources(cfg: MixConfig, notice=None) -> list[Source]:
    """The sources the mixture uses (weight 0 dropped), checked to share one tokenizer."""
    if not cfg.sources:
        raise UsageError("a mixture needs at least one source (--source NAME=PATH:WEIGHT, or a mix file)")
    used = []
    for name, spec in cfg.sources.items():
        if isinstance(spec, dict) and spec.get("weight") == 0:
            if notice:
                notice(f"source {name!r} has weight 0: dropped from the mixture")
            continue
        used.append((name, spec))
    if not used:
        raise UsageError("every source has weight 0: nothing to mix")
    sources = [open_source(n, s) for n, s in used]
    first = sources[0]
    for s in sources[1:]:
        if s.tokenizer.get("fingerprint") != first.tokenizer.get("fingerprint"):
            raise UsageError(
                f"sources {first.name!r} and {s.name!r} were tokenized with different tokenizers "
                f"({first.tokenizer.get('path')} vs {s.tokenizer.get('path')}); re-encode one of them"
            )
    for s in sources:
        if s.tokens == 0:
            raise UsageError(f"source {s.name!r} ({s.ds.path}) holds no train tokens")
    return sources


# ----------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """The mixture's documents in order: per split, source index, shard, row and length of each."""

    sources: list[Source]
    src: dict[str, np.ndarray]
    shard: dict[str, np.ndarray]
    row: dict[str, np.ndarray]
    length: dict[str, np.ndarray]
    index: dict[str, np.ndarray]  # position of the document in its source's split (dataset order)
    table: list[dict[str, Any]]
    budget: int
    fingerprint: str

    def tokens(self, split: str = "train") -> int:
        return int(self.length[split].sum())


def _key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _fill(perm: np.ndarray, lengths: np.ndarray, rem: int, rounds: int = 64) -> np.ndarray:
    """The documents of a fractional pass: the permutation's prefix that stays under `rem` tokens, then
    (in permutation order) the next documents that still fit, and one last document if ending past
    `rem` is closer than stopping short. With long documents (crawl pages of thousands of tokens) a
    plain prefix could miss a small source's share by a document; this lands within a few tokens."""
    cum = np.cumsum(lengths[perm])
    j = int(np.searchsorted(cum, rem, side="right"))  # perm[:j] is under (or at) rem
    take, left = [perm[:j]], rem - (int(cum[j - 1]) if j else 0)
    rest = perm[j:]
    for _ in range(rounds):
        if left <= 0 or not len(rest):
            break
        fits = np.flatnonzero(lengths[rest] <= left)
        if not len(fits):
            over = int(np.argmin(lengths[rest]))
            if lengths[rest[over]] - left < left:  # overshooting is closer than stopping short
                take.append(rest[over : over + 1])
            break
        take.append(rest[fits[0] : fits[0] + 1])
        left -= int(lengths[rest[fits[0]]])
        rest = rest[fits[0] + 1 :]
    return np.concatenate(take)


def source_sequence(lengths: np.ndarray, target: int, seed: int, name: str) -> tuple[np.ndarray, int]:
    """Document indices (train-local) of one source for `target` tokens: seeded passes, closest cut."""
    n, total = len(lengths), int(lengths.sum())
    full, rem = divmod(int(target), total)
    seq, last = [], -1
    for k in range(full + (1 if rem else 0)):
        perm = np.random.default_rng([seed, _key(name), k]).permutation(n)
        if n > 1 and perm[0] == last:  # never the same document twice in a row
            perm[[0, 1]] = perm[[1, 0]]
        if k == full:
            perm = _fill(perm, lengths, rem)
        seq.append(perm)
        last = (
            int(perm[-1]) if len(perm) else last
        )  # a target under half the shortest document: none (make_plan refuses)
    out = np.concatenate(seq) if seq else np.zeros(0, np.int64)
    return out, full + (1 if rem else 0)


def _interleave(lengths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(source index, position in its sequence) of the merged stream, by token progress."""
    keys, srcs, pos = [], [], []
    for i, lens in enumerate(lengths):
        if len(lens) == 0:
            continue
        cum = np.cumsum(lens, dtype=np.float64)
        keys.append((cum - lens / 2.0) / cum[-1])
        srcs.append(np.full(len(lens), i, np.int32))
        pos.append(np.arange(len(lens), dtype=np.int64))
    if not keys:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    k, s, p = np.concatenate(keys), np.concatenate(srcs), np.concatenate(pos)
    order = np.lexsort((s, k))
    return s[order], p[order]


def targets(cfg: MixConfig, sources: list[Source], notice=None) -> tuple[list[int], int, list[float]]:
    """(target train tokens per source, total budget, target proportion per source)."""
    if cfg.temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {cfg.temperature}")
    weighted = [s for s in sources if s.epochs is None]
    given = [s.weight is not None for s in weighted]
    if any(given) and not all(given):
        missing = [s.name for s in weighted if s.weight is None]
        raise UsageError(f"give every source a weight or epochs, or none a weight (no weight: {', '.join(missing)})")
    fixed = {s.name: int(round(s.epochs * s.tokens)) for s in sources if s.epochs is not None}
    for s in sources:
        if s.epochs is not None and fixed[s.name] == 0:
            raise UsageError(f"source {s.name!r}: {s.epochs} epochs is no token of its {s.tokens:,}")
    raw = np.array([s.weight if s.weight is not None else float(s.tokens) for s in weighted], np.float64)
    if all(given) and weighted and abs(raw.sum() - 1.0) > 1e-6 and cfg.temperature == 1.0 and notice:
        notice(
            f"weights sum to {raw.sum():g}, not 1: normalized to "
            + ", ".join(f"{s.name} {w / raw.sum():.4f}" for s, w in zip(weighted, raw))
        )
    p = raw ** (1.0 / cfg.temperature) if len(raw) else raw
    p = p / p.sum() if len(p) else p
    budget = parse_tokens(cfg.tokens)
    if budget is None:
        if weighted:
            big = int(np.argmax([s.tokens for s in weighted]))
            share = weighted[big].tokens / p[big]
        else:
            share = 0
    else:
        share = budget - sum(fixed.values())
        if weighted and share <= 0:
            raise UsageError(
                f"--tokens {budget:,} leaves no token for the weighted sources after the fixed-epoch ones "
                f"({sum(fixed.values()):,} tokens)"
            )
        if not weighted and share != 0 and notice:
            notice(
                f"every source has fixed epochs: the mixture is {sum(fixed.values()):,} tokens, not --tokens {budget:,}"
            )
    wt = {s.name: int(round(pi * share)) for s, pi in zip(weighted, p)}
    for s in weighted:
        need = wt[s.name] / s.tokens
        if need > cfg.max_epochs * (1 + 1e-9):
            raise UsageError(
                f"source {s.name!r} would need {need:.2f} epochs of its {s.tokens:,} tokens for its share; "
                f"allow repetition with --max-epochs {np.ceil(need * 100) / 100:g}, or lower its weight or --tokens"
            )
    tokens = [fixed.get(s.name, wt.get(s.name, 0)) for s in sources]
    total = sum(tokens)
    return tokens, total, [t / total for t in tokens]


SHARE_SLACK = 0.05  # a source more than 5% off its target tokens (whole documents too long for the budget): a notice


def make_plan(cfg: MixConfig, sources: list[Source], notice=None) -> Plan:
    tgt, budget, prop = targets(cfg, sources, notice)
    seqs = []
    table = []
    for s, t, pr in zip(sources, tgt, prop):
        seq, passes = source_sequence(s.length["train"], t, cfg.seed, s.name)
        seqs.append(seq)
        table.append(
            {
                "name": s.name,
                "path": str(s.ds.path),
                "weight": s.weight,
                "fixed_epochs": s.epochs,
                "target_proportion": pr,
                "target_tokens": t,
                "passes": passes,
                "available_tokens": s.tokens,
                "available_documents": s.docs,
                "val_documents": len(s.length["val"]),
                "val_tokens": int(s.length["val"].sum()),
                "lineage": s.ds.lineage(),
            }
        )
    out: dict[str, dict[str, np.ndarray]] = {"src": {}, "shard": {}, "row": {}, "length": {}, "index": {}}
    for split in ("train", "val"):
        seq = seqs if split == "train" else [np.arange(len(s.length["val"])) for s in sources]
        src, pos = _interleave([s.length[split][q] for s, q in zip(sources, seq)])
        idx = np.zeros(len(src), np.int64)
        for i, q in enumerate(seq):
            m = src == i
            idx[m] = q[pos[m]]
        out["src"][split], out["index"][split] = src, idx
        for k in ("shard", "row", "length"):
            col = np.zeros(len(src), np.int64)
            for i, s in enumerate(sources):
                m = src == i
                col[m] = getattr(s, k)[split][idx[m]]
            out[k][split] = col
    total = int(out["length"]["train"].sum())
    for i, (s, r) in enumerate(zip(sources, table)):
        m = out["src"]["train"] == i
        r["tokens"] = int(out["length"]["train"][m].sum())
        r["proportion"] = r["tokens"] / total
        r["documents"] = int(m.sum())
        r["epochs"] = r["tokens"] / r["available_tokens"]
        if r["target_tokens"] and not r["documents"]:
            raise UsageError(
                f"source {s.name!r}: its target of {r['target_tokens']:,} tokens is under half its shortest "
                f"document ({int(s.length['train'].min()) if len(s.length['train']) else 0:,} tokens), so it would get none; "
                "raise --tokens or its weight, or split its documents"
            )
        if notice and abs(r["tokens"] - r["target_tokens"]) > SHARE_SLACK * r["target_tokens"]:
            notice(
                f"source {s.name!r} gets {r['tokens']:,} tokens for a target of {r['target_tokens']:,} "
                f"({r['proportion']:.1%} of the mixture, not {r['target_proportion']:.1%}): its documents are whole "
                f"and up to {int(s.length['train'].max(initial=0)):,} tokens long; raise --tokens or split them"
            )
    fp = sha256_text(
        canonical_json(
            {
                "seed": cfg.seed,
                "table": [{k: r[k] for k in ("name", "target_tokens")} for r in table],
                "inputs": [r["lineage"]["fingerprint"] for r in table],
            }
        )
    )
    return Plan(sources, out["src"], out["shard"], out["row"], out["length"], out["index"], table, budget, fp)
