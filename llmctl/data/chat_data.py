"""Instruction (SFT) and preference data: reading, the truncation policy, batching, `data import`.

Inputs are a finished llmctl dataset directory, a `.parquet` file or a `.jsonl` file with
  SFT:   `prompt` + `response`, or `messages` (a list of {role, content});
  prefs: `prompt` + `chosen` + `rejected` (`prompt` a string = one user turn, or a list of messages).
Everything is encoded with the one chat template (`llmctl.tokenizer.chat.encode_chat`).

Truncation policy (one for SFT, reward and DPO), for a sequence longer than `max_len` tokens:
the prompt part is cut from the LEFT (oldest turns go first) down to
max(max_len - len(response), max_len // 2) tokens, then the response is cut from the RIGHT to
fit. For a preference pair, len(response) is the longer of the two, so chosen and rejected keep
the same prompt tokens. Cut examples are counted; an example left with no trained token is dropped and counted,
and a dataset left with none is an error. With an 8192-token BPE, 5 of 7,473 GSM8K train
examples exceed 512 tokens (16% exceed 256); 3.5% of HH-RLHF harmless-base pairs exceed 512 (23%
exceed 256).

Held-out split: a `split` column when present (train/val), else a stable hash of the example's
text, so the split does not depend on row order, shard count or worker count.

`data import --format prefs` of Anthropic HH-RLHF ("\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues):
both dialogues are parsed into turns; the prompt is the turns they share (ending with a Human
turn), chosen/rejected are their final Assistant turns. Pairs whose turns differ before the
last reply, with an empty or identical reply, or that do not parse, are skipped with a reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.data.doc_import import import_docs
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset, StageOutput, abort_shards, close_shards, fingerprint_file, shard_name
from llmctl.store.integrity import read_parquet
from llmctl.store.lock import exclusive_output
from llmctl.tokenizer.base import check_messages
from llmctl.tokenizer.chat import encode_chat
from llmctl.utils.progress import note

SFT_COLUMNS = "`prompt` + `response`, or `messages`"
PREF_COLUMNS = "`prompt` + `chosen` + `rejected`"
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGE_TYPE), ("split", pa.string())])
PREF_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", MESSAGE_TYPE),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("split", pa.string()),
    ]
)


# ----------------------------------------------------------------------------- reading


def read_rows(path: str | Path, skipped: dict[str, int] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows of a dataset dir / .parquet / .jsonl, and its lineage record.

    A JSONL line that is not valid UTF-8 is a bad record: skipped and counted in `skipped`
    ("invalid UTF-8"; without a `skipped` dict, a notice says how many). A line that is not JSON
    is an error naming the line: the file is not the JSONL it claims to be."""
    p = Path(path)
    if p.is_dir():
        ds = Dataset.open(p)
        return list(ds.iter_rows()), ds.lineage()
    if not p.is_file():
        raise UsageError(f"{p}: no such file or dataset directory")
    lineage = {"path": str(p.resolve()), "stage": "file", "fingerprint": fingerprint_file(p)}
    if p.suffix == ".parquet":
        return read_parquet(p).to_pylist(), lineage
    if p.suffix in (".jsonl", ".json"):
        rows, bad_utf8 = [], 0
        with open(p, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    bad_utf8 += 1
                    continue
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise UsageError(f"{p}:{n}: not a JSON line ({e.msg})") from None
        if bad_utf8 and skipped is not None:
            skipped["invalid UTF-8"] = skipped.get("invalid UTF-8", 0) + bad_utf8
        elif bad_utf8:
            note(f"{p}: skipped {bad_utf8} line(s) that are not valid UTF-8")
        return rows, lineage
    raise UsageError(f"{p}: expected a dataset directory, a .parquet or a .jsonl file")


def to_messages(prompt: Any, where: str = "prompt") -> list[dict[str, str]]:
    """A prompt as a conversation: a string is one user turn; a list must hold {role, content}
    messages with a known role and text content (else a one-line `UsageError` naming `where`)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)):
        try:
            check_messages(prompt)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
        return [
            {
                "role": m["role"],
                "content": m["content"],
                **({"tool_calls": m["tool_calls"]} if m.get("tool_calls") else {}),
            }
            for m in prompt
        ]
    raise UsageError(f"{where}: a prompt must be a string or a list of messages, got {type(prompt).__name__}")


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def split_of(row: dict[str, Any], key: Any, val_fraction: float, seed: int) -> str:
    """'val' or 'train': the row's `split` column if it has one, else a stable hash of `key`."""
    s = row.get("split")
    if s in ("train", "val", "validation", "test"):
        return "train" if s == "train" else "val"
    h = int.from_bytes(hashlib.sha256(f"{seed}:{_key(key)}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def sft_conversations(rows: list[dict[str, Any]], where: str = "data") -> list[list[dict[str, str]]]:
    """Each row as a conversation ending with an assistant turn."""
    if not rows:
        raise UsageError(f"{where}: no rows")
    cols = set(rows[0])
    out = []
    if "messages" in cols:
        for i, r in enumerate(rows):
            out.append(to_messages(r.get("messages"), f"{where}: row {i + 1}"))
    elif {"prompt", "response"} <= cols:
        for i, r in enumerate(rows):
            if not isinstance(r.get("response"), str):
                raise UsageError(f"{where}: row {i + 1}: response must be text, got {type(r.get('response')).__name__}")
            out.append(
                to_messages(r.get("prompt"), f"{where}: row {i + 1}")
                + [{"role": "assistant", "content": r["response"]}]
            )
    else:
        raise UsageError(f"{where}: expected SFT columns {SFT_COLUMNS}; found {', '.join(sorted(cols))}")
    return out


def pref_triples(rows: list[dict[str, Any]], where: str = "data") -> list[tuple[list[dict[str, str]], str, str]]:
    if not rows:
        raise UsageError(f"{where}: no rows")
    cols = set(rows[0])
    if not {"prompt", "chosen", "rejected"} <= cols:
        raise UsageError(f"{where}: expected preference columns {PREF_COLUMNS}; found {', '.join(sorted(cols))}")
    out = []
    for i, r in enumerate(rows):
        at = f"{where}: row {i + 1}"
        if not all(isinstance(r.get(k), str) for k in ("chosen", "rejected")):
            raise UsageError(f"{at}: chosen and rejected must be text")
        out.append((to_messages(r.get("prompt"), at), r["chosen"], r["rejected"]))
    return out


def is_degenerate(chosen: str, rejected: str) -> bool:
    """A pair whose replies are the same text (but for surrounding space): it carries no preference."""
    return chosen.strip() == rejected.strip()


# ----------------------------------------------------------------------------- encoding + truncation


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # per id: trained (response) token
    truncated: bool


def fit(
    prompt_ids: list[int], prompt_mask: list[bool], resp_ids: list[int], resp_mask: list[bool], max_len: int
) -> Encoded:
    """The module's truncation policy: cut the prompt from the left, then the response from the right."""
    if len(prompt_ids) + len(resp_ids) <= max_len:
        return Encoded(prompt_ids + resp_ids, prompt_mask + resp_mask, False)
    keep_p = min(len(prompt_ids), max(max_len - len(resp_ids), max_len // 2))
    p_ids, p_mask = prompt_ids[len(prompt_ids) - keep_p :], prompt_mask[len(prompt_ids) - keep_p :]
    keep_r = max_len - keep_p
    return Encoded(p_ids + resp_ids[:keep_r], p_mask + resp_mask[:keep_r], True)


def response_ids(tok: Any, prompt: list[dict[str, str]], response: str) -> list[int]:
    """An assistant reply's ids through its end-of-turn token: `<|end|>` in llmctl's format, the
    model's own template for a Hugging Face tokenizer (`HFTokenizer.response_ids`)."""
    if hasattr(tok, "response_ids"):
        return tok.response_ids(prompt, response)
    return tok.encode(response) + [tok.special_ids["<|end|>"]]


def encode_conversation(tok: Any, messages: list[dict[str, str]], max_len: int) -> Encoded:
    """A conversation ending with an assistant turn; prompt part = everything before that turn's content."""
    if not messages or messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
        raise UsageError("an SFT conversation must end with an assistant turn (not an unanswered tool call)")
    p_ids, p_mask = encode_chat(tok, messages[:-1], add_generation_prompt=True)
    r_ids = response_ids(tok, messages[:-1], messages[-1]["content"])
    return fit(p_ids, p_mask, r_ids, [True] * len(r_ids), max_len)


def encode_pair(tok: Any, prompt: list[dict[str, str]], response: str, max_len: int) -> Encoded:
    """Prompt + one assistant response; only the response (and its <|end|>) is marked."""
    return encode_responses(tok, prompt, [response], max_len)[0]


def encode_responses(tok: Any, prompt: list[dict[str, str]], responses: list[str], max_len: int) -> list[Encoded]:
    """Prompt + each response, the prompt cut the same way for all (as the longest response needs),
    so chosen and rejected of a pair are always compared on the same context."""
    p_ids, _ = encode_chat(tok, prompt, add_generation_prompt=True)
    rs = [response_ids(tok, prompt, r) for r in responses]
    longest = max(len(r) for r in rs)
    keep_p = len(p_ids) if len(p_ids) + longest <= max_len else min(len(p_ids), max(max_len - longest, max_len // 2))
    cut = keep_p < len(p_ids)
    p_ids = p_ids[len(p_ids) - keep_p :]
    out = []
    for r in rs:
        keep_r = min(len(r), max_len - keep_p)
        out.append(Encoded(p_ids + r[:keep_r], [False] * keep_p + [True] * keep_r, cut or keep_r < len(r)))
    return out


# ----------------------------------------------------------------------------- batching


class ItemBatches:
    """This rank's micro-batches over `n` items, reshuffled each epoch; resumable (epoch, position).

    Each micro-step takes `micro_batch * world` items of the epoch's permutation and rank r builds
    its slice, so the global order does not depend on the world size. A short tail is dropped.
    """

    def __init__(
        self,
        n: int,
        micro_batch: int,
        make: Callable[[list[int]], dict[str, Any]],
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        if n < micro_batch * world:
            raise UsageError(f"only {n} training items for micro_batch {micro_batch} x {world} rank(s)")
        self.n, self.mb, self.make, self.seed, self.rank, self.world = n, micro_batch, make, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        import torch  # torch: kept out of `llmctl data import`, which reads and writes these rows only

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> ItemBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        step = self.mb * self.world
        if self.pos + step > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        lo = self.pos + self.rank * self.mb
        idx = self._perm[lo : lo + self.mb]
        self.pos += step
        return self.make(idx)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation()


# ----------------------------------------------------------------------------- data import

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh(text: str) -> list[dict[str, str]] | None:
    """An HH-RLHF dialogue as messages; None when it does not parse."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        return None
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return msgs


def hh_to_pref(chosen: str, rejected: str) -> tuple[dict[str, Any] | None, str]:
    """(prompt/chosen/rejected row, '') or (None, reason) per the module's documented rule."""
    c, r = parse_hh(chosen), parse_hh(rejected)
    if c is None or r is None:
        return None, "unparsable dialogue"
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return None, "last turn is not the assistant's"
    if c[:-1] != r[:-1] or not c[:-1] or c[-2]["role"] != "user":
        return None, "dialogues differ before the last reply"
    if not c[-1]["content"] or not r[-1]["content"]:
        return None, "empty reply"
    if c[-1]["content"] == r[-1]["content"]:
        return None, DEGENERATE
    return {"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": r[-1]["content"]}, ""


class _Skip(Exception):
    """A row `data import` does not carry (the message is the counted reason)."""


MALFORMED = "malformed messages"  # a message that is not {role, content} with a known role and text


TOOL_CALLS = "tool calls (not imported: give sft the .jsonl file itself)"


def _sft_row(r: dict[str, Any]) -> list[dict[str, str]] | None:
    if "messages" in r:
        msgs = to_messages(r["messages"])
        if any(m.get("tool_calls") or m["role"] == "tool" for m in msgs):
            raise _Skip(TOOL_CALLS)
        return msgs
    for p, a in (("prompt", "response"), ("question", "answer"), ("instruction", "output")):
        if p in r and a in r:
            return [{"role": "user", "content": r[p]}, {"role": "assistant", "content": r[a]}]
    return None


DEGENERATE = "identical replies"  # chosen == rejected: no preference to learn (DPO loss log 2, gradient 0)


def _pref_row(r: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    if "prompt" in r and "chosen" in r and "rejected" in r:
        if not all(isinstance(r[k], str) for k in ("chosen", "rejected")):
            return None, "chosen/rejected not text"
        if is_degenerate(r["chosen"], r["rejected"]):
            return None, DEGENERATE
        return {"prompt": to_messages(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}, ""
    if "chosen" in r and "rejected" in r:
        return hh_to_pref(r["chosen"], r["rejected"])
    return None, "missing prompt/chosen/rejected"


@exclusive_output("out", discard_unfinished=True)
def import_data(
    src: str | Path,
    out: str | Path,
    fmt: str,
    val_fraction: float = 0.05,
    seed: int = 0,
    overwrite: bool = False,
    doc_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Convert a JSONL/Parquet file to an `sft` or `prefs` dataset (one shard) with a manifest
    (`docs`: text/JSONL/Parquet files as a documents dataset, llmctl.data.doc_import)."""
    if fmt == "docs":
        return import_docs(src, out, overwrite=overwrite, **(doc_options or {}))
    if fmt not in ("sft", "prefs"):
        raise UsageError(f"unknown --format {fmt!r}; choose sft, prefs or docs")
    skipped: dict[str, int] = {}
    rows, lineage = read_rows(src, skipped)
    cfg = ImportConfig(format=fmt, val_fraction=val_fraction, seed=seed)
    so = StageOutput(out, fmt, cfg, inputs=[lineage], overwrite=overwrite)
    if so.complete:
        return so.manifest
    kept: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        try:
            if fmt == "sft":
                msgs = _sft_row(r)
                row, why = (
                    ({"messages": msgs}, "") if msgs else (None, "no prompt/response, question/answer or messages")
                )
            else:
                row, why = _pref_row(r)
        except UsageError:  # a bad record inside a usable file: counted and skipped
            row, why = None, MALFORMED
        except _Skip as e:
            row, why = None, str(e)
        if row is None:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        row["id"] = str(r.get("id", f"row-{i:07d}"))
        row["split"] = split_of(r, {k: v for k, v in row.items() if k != "id"}, val_fraction, seed)
        kept.append(row)
    if not kept:
        raise UsageError(f"{src}: no usable rows for --format {fmt} (skipped: {skipped})")
    if skipped.get(DEGENERATE):
        note(
            f"{src}: dropped {skipped[DEGENERATE]} preference pair(s) whose chosen and rejected replies are "
            "identical: they carry no preference (DPO loss log 2, zero gradient)"
        )
    schema = SFT_SCHEMA if fmt == "sft" else PREF_SCHEMA
    name = shard_name(0)
    w = so.shard_writer(f"{name}.parquet", schema)
    try:
        for row in kept:
            w.write({c: row[c] for c in schema.names})
    except BaseException:
        abort_shards(w)
        raise
    so.finish_task(name, close_shards(f"{name}.parquet", data=w))
    stats = {
        "read": len(rows) + skipped.get("invalid UTF-8", 0),
        "kept": len(kept),
        "skipped": skipped,
        "val": sum(r["split"] == "val" for r in kept),
    }
    return so.finalize([name], schema, stats=stats)


@dataclass
class ImportConfig:
    format: str = "sft"
    val_fraction: float = 0.05
    seed: int = 0
