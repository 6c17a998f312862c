"""Generation tasks scored by exact match after an extraction rule (GSM8K by default).

Data: JSONL with `question` and `answer` (the reference number after `####`). `format=plain` prompts
"Question: {question}\\nAnswer:" after k shots from `fewshot_data`; `format=chat` sends the question
as one user turn through the chat template. Decoding is greedy by default and stops at a stop id,
a blank line or "Question:" (plain), or `max_new_tokens`. A prediction (`extract`) matches when it
equals the reference as a number. Metrics: `exact_match`, `mean_new_tokens`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.eval.base import Samples, file_lineage, mean_stderr, read_jsonl
from llmctl.eval.lm import LM

TASK = "exact_match"
_NUM = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


@dataclass
class ExactMatchConfig:
    data: str = ""  # --em-data: GSM8K-layout JSONL (question, answer)
    limit: int = 0
    shots: int = 0
    fewshot_data: str = ""  # with shots > 0: JSONL of solved examples (e.g. GSM8K train)
    format: str = "plain"  # plain | chat
    chat: bool = False  # --chat: format chat (the model's chat template, shots as earlier turns)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0


def _to_number(s: str) -> float | None:
    s = s.replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(s)
    except ValueError:
        return None


def extract(text: str) -> float | None:
    """The number after the last '####', else the last number in the text."""
    if "####" in text:
        m = _NUM.search(text.rsplit("####", 1)[1])
        if m:
            return _to_number(m.group())
    found = _NUM.findall(text)
    return _to_number(found[-1]) if found else None


def check(cfg: ExactMatchConfig) -> None:
    if cfg.shots and not cfg.fewshot_data:
        raise UsageError("exact_match with shots > 0 needs --set exact_match.fewshot_data=FILE.jsonl")


def chat_messages(question: str, shots: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each shot a user turn (its question) and an assistant turn (its answer), then the question."""
    msgs = []
    for s in shots:
        msgs += [{"role": "user", "content": str(s["question"])}, {"role": "assistant", "content": str(s["answer"])}]
    return msgs + [{"role": "user", "content": question}]


def prompt_ids(lm: LM, question: str, shots: list[dict[str, Any]], fmt: str) -> list[int]:
    if fmt == "plain":
        parts = [f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots]
        return lm.codec.encode("\n\n".join(parts + [f"Question: {question}\nAnswer:"]))
    if fmt == "chat":
        if lm.codec.chat is None:
            raise UsageError(f"{lm.name}: its tokenizer has no chat template; --chat needs one")
        return lm.codec.chat(chat_messages(question, shots))
    raise UsageError(f"exact_match.format must be plain or chat, got {fmt!r}")


SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("prompt", pa.string()),
        ("output", pa.string()),
        ("prediction", pa.float64()),
        ("reference", pa.float64()),
        ("exact_match", pa.float64()),
        ("new_tokens", pa.int64()),
    ]
)


def run(
    lm: LM, cfg: ExactMatchConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list, Samples]:
    rows = read_jsonl(cfg.data, cfg.limit)
    if not rows or any("question" not in r or "answer" not in r for r in rows):
        raise UsageError(f"{cfg.data}: needs JSONL rows with question and answer")
    shots = read_jsonl(cfg.fewshot_data, cfg.shots) if cfg.shots else []
    fmt = "chat" if cfg.chat else cfg.format
    stop_text = ("\n\n", "Question:") if fmt == "plain" else ()
    if progress:
        progress.start(TASK, len(rows))
    hits, lengths, samples = [], [], []
    prompts = [prompt_ids(lm, r["question"], shots, fmt) for r in rows]
    outs = lm.generate_many(
        prompts,
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        seeds=[cfg.seed + i for i in range(len(rows))],
        stop_text=stop_text,
        batch_size=batch_size,
        on_batch=(lambda n, t: progress.advance(n, t)) if progress else None,
    )
    for i, (r, prompt, out) in enumerate(zip(rows, prompts, outs)):
        text = lm.codec.decode(out)
        for s in stop_text:
            text = text.split(s)[0]
        ref = extract(str(r["answer"]))
        pred = extract(text)
        hits.append(float(ref is not None and pred is not None and abs(pred - ref) < 1e-9))
        lengths.append(float(len(out)))
        samples.append(
            {
                "id": str(r.get("id", i)),
                "question": r["question"],
                "prompt": lm.codec.decode(prompt),
                "output": text,
                "prediction": pred,
                "reference": ref,
                "exact_match": hits[-1],
                "new_tokens": len(out),
            }
        )
    n = len(rows)
    lineage = [file_lineage(cfg.data)]
    return (
        [
            {"task": TASK, "metric": "exact_match", "value": sum(hits) / n, "stderr": mean_stderr(hits), "n": n},
            {
                "task": TASK,
                "metric": "mean_new_tokens",
                "value": sum(lengths) / n,
                "stderr": mean_stderr(lengths),
                "n": n,
            },
        ],
        lineage,
        Samples(SAMPLES_SCHEMA, samples),
    )
