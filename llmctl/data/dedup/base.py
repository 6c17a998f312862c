"""Deduplication, per document: normalization, exact hashes, MinHash signatures, LSH band keys,
and the sentence spans of C4's span dedup. The global steps that use them are in stages.py
and shuffle.py.

- Normalized text (`normalize_text`): lowercase, punctuation (anything not a word character or
  whitespace) removed, whitespace runs collapsed to one space. "Hello,  World!" and "hello world"
  are the same document for exact dedup. fastText quality scoring uses the same function.
- Exact dedup key: the 64-bit xxh3 hash of the normalized text. At 64 bits the chance of one
  false collision among 10^9 documents is about 3%; a collision removes one document.
- MinHash: word n-gram shingles (default 5) of the normalized text, hashed with datasketch's own
  hash family (`MinHash.update_batch`: sha1_hash32 and the permutations of `MinHash(num_perm,
  seed)`), so a signature here equals `datasketch.MinHash(...).update(...)` for the same shingles
  (tests/data/dedup/test_dedup.py checks it). A document shorter than n words is one shingle of all its words.
- LSH: `bands` x `rows` from datasketch's `_optimal_param(threshold, num_perm)`, weighing false
  negatives 0.9 and false positives 0.1 (candidates are checked afterwards, a missed pair is lost
  for good): 0.8 and 128 give 14 bands of 9 rows, so a pair becomes a candidate with probability
  0.87 at Jaccard 0.8, 0.95 at 0.83, 0.999 at 0.9, and 0.03 at 0.5 (datasketch's equal weights
  give 9 x 13: 0.40 at 0.8, 0.57 at 0.83). Each band's values are hashed to one uint64 key, so a
  document costs 8 bytes per band whatever its length. Candidates are then checked (`verify`):
  `jaccard` (default) computes the true shingle Jaccard, reading the texts of candidate documents
  only; `signature` keeps a pair when the fraction of equal signature values, an unbiased
  estimate of Jaccard with standard deviation sqrt(J(1-J)/num_perm) (0.03 at 0.83), reaches the
  threshold, so about a quarter of true pairs at 0.80-0.85 fall just under it (benchmarks/dedup.py
  at 1x: recall 0.925 with `signature`, 0.989 with `jaccard`, at the same speed); `none` keeps
  every LSH candidate (datatrove's behaviour).
- Lines (Dolma's and CCNet's paragraph dedup): a text is cut on "\n"; each line's key is the hash
  of its normalized text (lines that normalize to nothing, e.g. "---", have none). A line counts
  once per document however often it repeats there.
- C4 spans: a text is cut into lines and each line into sentences (a sentence ends at `.!?`,
  with closing quotes or brackets, followed by whitespace, as in llmctl.data.steps.c4); a span is
  `span_sentences` (3) consecutive sentences of a document, hashed over their normalized text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import xxhash

from llmctl.config import runtime
from llmctl.errors import UsageError

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
SCOPES = ("self", "self+against")
VERIFY = ("none", "signature", "jaccard")
MINHASH_CHUNK = 4096  # shingles hashed at once: datasketch holds 3 uint64 [chunk x num_perm] arrays (12 MB)


@dataclass
class DedupConfig:
    exact: bool = True  # exact duplicates of the normalized text (reason dedup.exact)
    c4_span: bool = True  # C4's repeated three-sentence spans (reason dedup.c4_span)
    # Dolma/CCNet line dedup: a normalized line found in more than line_max_docs documents is cut
    # from all of them but the first (a document left too short: reason dedup.line)
    line: bool = False
    line_max_docs: int = 10
    line_keep_first: bool = True  # false: cut every copy, the first document's too (CCNet, CS336)
    minhash: bool = True  # MinHash near duplicates (reason dedup.minhash)
    scope: str = "self"  # self: within this run; self+against: also against the `against` datasets
    against: list[str] = field(default_factory=list)  # earlier llmctl filter outputs (count as earlier)
    ngram: int = 5  # words per shingle
    num_perm: int = 128
    threshold: float = 0.8  # Jaccard threshold (LSH parameters and the candidate check)
    bands: int | None = None  # None: datasketch's optimal bands x rows for the threshold
    rows: int | None = None
    verify: str = "jaccard"  # candidate check: jaccard (true, default), signature (estimated), none
    seed: int = 1  # MinHash permutations seed (datasketch's default)
    span_sentences: int = 3
    span_min_sentences: int = 3  # a document left with fewer sentences is removed (dedup.c4_span)
    keep_work: bool = runtime(False)  # keep OUT/_work (intermediates) after the run
    # key partitions of the dedup shuffle (stages.py); None: one per 100k documents. The
    # output is byte-identical for any value, only the memory and the parallelism of tasks change
    partitions: int | None = runtime(None)

    @property
    def enabled(self) -> bool:
        return self.exact or self.c4_span or self.minhash or self.line


def validate(cfg: DedupConfig) -> tuple[int, int]:
    """Check the options; returns (bands, rows)."""
    if cfg.scope not in SCOPES:
        raise UsageError(f"--dedup-scope must be one of {', '.join(SCOPES)}, got {cfg.scope!r}")
    if cfg.scope == "self" and cfg.against:
        raise UsageError("--against needs --dedup-scope self+against")
    if cfg.scope == "self+against" and not cfg.against:
        raise UsageError("--dedup-scope self+against needs at least one --against DATASET")
    if cfg.verify not in VERIFY:
        raise UsageError(f"dedup.verify must be one of {', '.join(VERIFY)}, got {cfg.verify!r}")
    if not 0.0 < cfg.threshold < 1.0:
        raise UsageError(f"--minhash-threshold must be between 0 and 1, got {cfg.threshold}")
    if cfg.partitions is not None and not 1 <= cfg.partitions <= 1 << 16:
        raise UsageError(f"--dedup-partitions (dedup.partitions) must be between 1 and 65536, got {cfg.partitions}")
    if cfg.line_max_docs < 1:
        raise UsageError(f"--line-max-docs must be at least 1, got {cfg.line_max_docs}")
    if cfg.ngram < 1 or cfg.num_perm < 2 or cfg.span_sentences < 1:
        raise UsageError("dedup.ngram, dedup.num_perm and dedup.span_sentences must be positive")
    return lsh_params(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)


def lsh_params(threshold: float, num_perm: int, bands: int | None, rows: int | None) -> tuple[int, int]:
    if bands is None and rows is None:
        from datasketch.lsh import _optimal_param  # datasketch (scipy): kept out of --help

        return tuple(int(x) for x in _optimal_param(threshold, num_perm, 0.1, 0.9))  # type: ignore[return-value]
    if bands is None or rows is None:
        raise UsageError("give both dedup.bands and dedup.rows, or neither")
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise UsageError(f"dedup.bands x dedup.rows ({bands} x {rows}) must be at most num_perm ({num_perm})")
    return bands, rows


# ----------------------------------------------------------------------------- per document


def normalize_text(text: str) -> str:
    return _SPACE.sub(" ", _PUNCT.sub("", text.lower())).strip()


def exact_hash(norm: str) -> int:
    return xxhash.xxh3_64_intdigest(norm.encode("utf-8"))


def shingles(norm: str, n: int) -> set[bytes]:
    words = norm.split()
    if len(words) < n:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int):
    from datasketch import MinHash  # datasketch (scipy): kept out of --help and of quality scoring

    m = MinHash(num_perm=num_perm, seed=seed)
    return m.permutations, m.scheme


def minhash(shingle_set: set[bytes], num_perm: int, seed: int) -> np.ndarray:
    """The datasketch MinHash signature (uint32[num_perm]) of a set of shingles."""
    from datasketch import MinHash  # datasketch (scipy): kept out of --help and of quality scoring

    perms, scheme = _permutations(num_perm, seed)
    m = MinHash(num_perm=num_perm, seed=seed, permutations=perms, scheme=scheme)
    ordered = sorted(shingle_set)
    for i in range(0, len(ordered), MINHASH_CHUNK):  # the same minimum, without a (shingles x num_perm) matrix
        m.update_batch(ordered[i : i + MINHASH_CHUNK])
    return np.asarray(m.hashvalues, dtype=np.uint32)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per band: xxh3 of the band's `rows` values, seeded by the band index."""
    return np.array(
        [xxhash.xxh3_64_intdigest(sig[b * rows : (b + 1) * rows].tobytes(), seed=b) for b in range(bands)],
        dtype=np.uint64,
    )


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / max(1, len(a | b))


# ----------------------------------------------------------------------------- C4 spans


def sentences(text: str) -> list[tuple[int, str]]:
    """(line number, sentence text with its trailing whitespace) for every sentence of `text`."""
    out: list[tuple[int, str]] = []
    for ln, line in enumerate(text.split("\n")):
        start = 0
        for m in _SENTENCE_END.finditer(line):
            if line[start : m.end()].strip():
                out.append((ln, line[start : m.end()]))
            start = m.end()
        if line[start:].strip():
            out.append((ln, line[start:]))
    return out


def span_hashes(sents: list[tuple[int, str]], k: int) -> list[int]:
    """Hash of each run of `k` consecutive sentences (position j covers sentences j..j+k-1)."""
    norms = [normalize_text(s) for _, s in sents]
    return [xxhash.xxh3_64_intdigest("\x00".join(norms[j : j + k]).encode("utf-8")) for j in range(len(norms) - k + 1)]


def drop_sentences(text: str, drop: set[int], lines: set[int] = frozenset()) -> tuple[str, int]:
    """`text` without the sentences whose index is in `drop` and those on a line in `lines`;
    returns (text, sentences left).

    Lines keep their order; a line left empty is removed; kept sentences of a line are joined as
    they were (each keeps its own trailing whitespace)."""
    sents = sentences(text)
    by_line: dict[int, list[str]] = {}
    for j, (ln, s) in enumerate(sents):
        if j not in drop and ln not in lines:
            by_line.setdefault(ln, []).append(s)
    kept = ["".join(parts).strip() for _, parts in sorted(by_line.items())]
    return "\n".join(k for k in kept if k), sum(len(p) for p in by_line.values())


# ----------------------------------------------------------------------------- lines


def line_hashes(text: str) -> list[tuple[int, int]]:
    """(line number, hash of the normalized line) of each line of `text` that has words; a line
    repeated inside the document is listed at each of its positions."""
    out = []
    for ln, line in enumerate(text.split("\n")):
        norm = normalize_text(line)
        if norm:
            out.append((ln, xxhash.xxh3_64_intdigest(norm.encode("utf-8"), seed=7)))
    return out


def drop_lines(text: str, drop: set[int]) -> str:
    """`text` without the lines whose number is in `drop`, each with its newline; the rest, blank
    lines and the document's trailing newline included, unchanged."""
    return "\n".join(line for ln, line in enumerate(text.split("\n")) if ln not in drop)
