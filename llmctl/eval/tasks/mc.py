"""Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness does (MMLU layout).

Data: a headerless CSV `question,A,B,C,D,answer`, a directory of them (`data_files`: MMLU's
layouts), or JSONL/Parquet with `question`, `A`..`D` (or `choices`) and `answer`. The prompt is
lm-eval's `mmlu` prompt with k shots from the subject's dev file; continuations are " A".." D"
(`choices=letters`) or the choice texts (`choices=text`), encoded as lm-eval's `_encode_pair`.
`acc`: argmax of the summed log-likelihood; `acc_norm`: per character (`norm=chars`, lm-eval) or
UTF-8 byte (`norm=bytes`) of the choice; ties go to the first choice. Per-item output: `SAMPLES_SCHEMA`.
`chat` (--chat) is lm-eval's `--apply_chat_template --fewshot_as_multiturn` on its mmlu task: the
subject line a system turn, each shot a user turn and the assistant's answer, the question the last
user turn, rendered by the model's chat template (its markers read as special ids); the choice,
with no leading space, is scored as the assistant's reply.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmctl.errors import UsageError
from llmctl.eval.base import Samples, file_lineage, mean_stderr
from llmctl.eval.lm import LM

TASK = "mc"
LETTERS = "ABCDEFGH"


@dataclass
class MCConfig:
    data: str = ""  # --mc-data: CSV, directory of CSVs, JSONL or Parquet
    shots: int = 0
    fewshot_data: str = ""  # default: <data>/../dev for an MMLU split directory
    choices: str = "letters"  # letters | text
    limit: int = 0  # items per file (0 = all)
    subjects: list[str] = field(default_factory=list)  # restrict to these subjects (directory input)
    norm: str = "chars"  # acc_norm divides by the choice's length in: chars (lm-eval) | bytes (UTF-8)
    chat: bool = False  # --chat: the model's chat template, shots as earlier turns, the choice as its reply


def _subject(path: Path) -> str:
    stem = path.stem
    for suffix in ("_val", "_test", "_dev", "_train"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.replace("_", " ")


def _normalize(row: dict[str, Any], where: str) -> dict[str, Any]:
    if "choices" in row:
        choices = [str(c) for c in row["choices"]]
    else:
        choices = [str(row[c]) for c in LETTERS if c in row and row[c] is not None]
    ans = row.get("answer")
    if isinstance(ans, str) and ans.strip().upper() in LETTERS[: len(choices)]:
        label = LETTERS.index(ans.strip().upper())
    elif isinstance(ans, int) or (isinstance(ans, str) and ans.strip().isdigit()):
        label = int(ans)
    else:
        raise UsageError(f"{where}: answer {ans!r} is not a letter or an index")
    if len(choices) < 2 or not 0 <= label < len(choices):
        raise UsageError(f"{where}: needs >= 2 choices and an answer among them")
    return {"question": str(row["question"]), "choices": choices, "label": label}


def read_items(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    """Items of one file: question, choices, label."""
    rows: list[dict[str, Any]] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for rec in csv.reader(f):
                if len(rec) < 4:
                    raise UsageError(f"{path}: expected question,A,B,C,D,answer rows, got {len(rec)} fields")
                rows.append({"question": rec[0], "choices": rec[1:-1], "answer": rec[-1]})
    elif path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        raise UsageError(f"{path}: unsupported multiple-choice file (use .csv, .jsonl or .parquet)")
    if limit:
        rows = rows[:limit]
    return [_normalize(r, f"{path}:{i + 1}") for i, r in enumerate(rows)]


SPLITS = ("dev", "val", "test")  # MMLU's: dev = the few-shot pool, val and test = scored items
_FILES = (".csv", ".jsonl", ".parquet")


def _split(path: Path) -> str | None:
    """The MMLU split of `abstract_algebra_val.csv` (val) or of a file in a `val/` folder."""
    for s in SPLITS:
        if path.stem.endswith(f"_{s}"):
            return s
    return path.parent.name if path.parent.name in SPLITS else None


def data_files(cfg: MCConfig) -> list[Path]:
    """The files whose questions are scored. MMLU layouts: the hendrycks root (`dev/ val/ test/`:
    test's files, else val's), one split folder (`val/`), or a flat folder of `SUBJECT_dev.csv`,
    `SUBJECT_val.csv`, `SUBJECT_test.csv` (per subject its test file, else its val file); dev files
    are the few-shot pool (`fewshot_file`), never scored from a folder. A file is scored as given."""
    p = Path(cfg.data)
    if p.is_dir():
        for split in ("test", "val"):  # the hendrycks root
            if (p / split).is_dir() and (p / "dev").is_dir():
                p = p / split
                break
        chosen: dict[str, Path] = {}
        for f in sorted(f for f in p.iterdir() if f.suffix in _FILES and _split(f) != "dev"):
            key = _subject(f) if _split(f) else f.name  # a flat folder with val and test of a subject: test
            if key not in chosen or _split(f) == "test":
                chosen[key] = f
        files = sorted(chosen.values())
        if cfg.subjects:
            want = {s.replace("_", " ") for s in cfg.subjects}
            files = [f for f in files if _subject(f) in want]
    elif p.is_file():
        files = [p]
    else:
        raise UsageError(f"{p}: no such multiple-choice file or directory")
    if not files:
        raise UsageError(
            f"{p}: no .csv/.jsonl/.parquet files to score (subjects {cfg.subjects or 'all'}; "
            "*_dev files are the few-shot pool)"
        )
    return files


def fewshot_file(cfg: MCConfig, f: Path) -> Path | None:
    """The few-shot pool of `f`'s subject: `mc.fewshot_data` (a file, or a folder searched by
    subject), else MMLU's dev file beside it (flat layout) or in `../dev/` (split folders)."""
    if not cfg.shots:
        return None
    if cfg.fewshot_data:
        bases = [Path(cfg.fewshot_data)]
    else:
        bases = [f.parent, f.parent.parent / "dev"]
    for base in bases:
        if base.is_file():
            return base
        if base.is_dir():
            matches = [
                g
                for g in sorted(base.iterdir())
                if g.suffix in _FILES
                and _subject(g) == _subject(f)
                and g != f
                and (_split(g) == "dev" or base != f.parent)
            ]
            if matches:
                return matches[0]
    raise UsageError(
        f"no few-shot (dev) file for subject {_subject(f)!r} beside {f} or in "
        f"{f.parent.parent / 'dev'} (set --set mc.fewshot_data=PATH)"
    )


def doc_to_text(item: dict[str, Any]) -> str:
    lines = [item["question"].strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def choice_strings(item: dict[str, Any], mode: str) -> list[str]:
    if mode == "letters":
        return list(LETTERS[: len(item["choices"])])
    if mode == "text":
        return list(item["choices"])
    raise UsageError(f"mc.choices must be letters or text, got {mode!r}")


def header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def build_context(item: dict[str, Any], subject: str, shots: list[dict[str, Any]], mode: str) -> str:
    parts = [doc_to_text(s) + " " + choice_strings(s, mode)[s["label"]] for s in shots] + [doc_to_text(item)]
    return header(subject) + "\n\n".join(parts)


def chat_messages(item: dict[str, Any], subject: str, shots: list[dict[str, Any]], mode: str) -> list[dict[str, str]]:
    """The conversation lm-eval's fewshot_as_multiturn builds for its mmlu task: the subject line
    (lm-eval's description) as the system turn, then per shot a user and an assistant turn."""
    msgs = [{"role": "system", "content": header(subject)}]
    for s in shots:
        msgs.append({"role": "user", "content": doc_to_text(s)})
        msgs.append({"role": "assistant", "content": choice_strings(s, mode)[s["label"]]})
    return msgs + [{"role": "user", "content": doc_to_text(item)}]


def encode_pair(
    lm: LM, context: str, continuation: str, encode: Callable[[str], list[int]] | None = None
) -> tuple[list[int], list[int]]:
    """lm-eval's HFLM._encode_pair (with `encode`, e.g. the chat encoder reading markers as special ids)."""
    enc = encode or lm.codec.encode
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc(context + continuation)
    ctx = enc(context)
    return ctx, whole[len(ctx) :]


SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("subject", pa.string()),
        ("question", pa.string()),
        ("context", pa.string()),
        ("continuations", pa.list_(pa.string())),
        ("loglikelihoods", pa.list_(pa.float64())),
        ("is_greedy", pa.list_(pa.bool_())),
        ("lengths", pa.list_(pa.int64())),
        ("pred", pa.int64()),
        ("pred_norm", pa.int64()),
        ("gold", pa.int64()),
        ("acc", pa.float64()),
        ("acc_norm", pa.float64()),
    ]
)


def choice_length(text: str, norm: str) -> int:
    if norm == "chars":
        return len(text)
    if norm == "bytes":
        return len(text.encode("utf-8"))
    raise UsageError(f"mc.norm must be chars or bytes, got {norm!r}")


def argmax(xs: list[float]) -> int:
    """Index of the largest value; the first on a tie (numpy's argmax, as lm-eval)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def build_requests(
    lm: LM, cfg: MCConfig
) -> tuple[list[dict[str, Any]], list[tuple[list[int], list[int]]], list[dict[str, Any]]]:
    """The scored items, one (context ids, continuation ids) request per choice, and the lineage."""
    choice_length("", cfg.norm)
    if cfg.chat and (lm.codec.chat_text is None or lm.codec.encode_special is None):
        raise UsageError(f"{lm.name}: its tokenizer has no chat template; --chat needs one")
    items, requests, lineage = [], [], []
    for f in data_files(cfg):
        fs = fewshot_file(cfg, f)
        shots = read_items(fs, cfg.shots) if fs else []
        lineage.append(file_lineage(f))
        for k, item in enumerate(read_items(f, cfg.limit)):
            conts = choice_strings(item, cfg.choices)
            if cfg.chat:
                ctx = lm.codec.chat_text(chat_messages(item, _subject(f), shots, cfg.choices), True)
                enc, lead = lm.codec.encode_special, ""
            else:
                ctx, enc, lead = build_context(item, _subject(f), shots, cfg.choices), lm.codec.encode, " "
            item.update(
                id=f"{f.stem}:{k}",
                subject=_subject(f),
                context=ctx,
                continuations=[lead + c for c in conts],
                first=len(requests),
                lengths=[choice_length(c, cfg.norm) for c in conts],
            )
            requests += [encode_pair(lm, ctx, lead + c, enc) for c in conts]
            items.append(item)
    return items, requests, lineage


def run(
    lm: LM, cfg: MCConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list, Samples]:
    items, requests, lineage = build_requests(lm, cfg)
    if progress:
        progress.start(TASK, len(requests))
    scored = lm.loglikelihood(requests, batch_size, progress.advance if progress else None)
    acc, acc_norm, samples = [], [], []
    for item in items:
        part = scored[item["first"] : item["first"] + len(item["lengths"])]
        ll = [x for x, _ in part]
        pred = argmax(ll)
        pred_n = argmax([x / max(1, n) for x, n in zip(ll, item["lengths"])])
        acc.append(float(pred == item["label"]))
        acc_norm.append(float(pred_n == item["label"]))
        samples.append(
            {
                "id": item["id"],
                "subject": item["subject"],
                "question": item["question"],
                "context": item["context"],
                "continuations": item["continuations"],
                "loglikelihoods": ll,
                "is_greedy": [g for _, g in part],
                "lengths": item["lengths"],
                "pred": pred,
                "pred_norm": pred_n,
                "gold": item["label"],
                "acc": acc[-1],
                "acc_norm": acc_norm[-1],
            }
        )
    n = len(items)
    rows = [
        {"task": TASK, "metric": m, "value": sum(v) / n, "stderr": mean_stderr(v), "n": n}
        for m, v in (("acc", acc), ("acc_norm", acc_norm))
    ]
    chance = [1.0 / len(item["lengths"]) for item in items]  # the accuracy of a uniform guess
    rows.append({"task": TASK, "metric": "chance", "value": sum(chance) / n, "stderr": None, "n": n})
    return rows, lineage, Samples(SAMPLES_SCHEMA, samples)
