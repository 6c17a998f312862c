"""LLM-annotated quality grades (FineWeb-Edu's recipe): a judge model grades documents 0-5.

`annotate(docs, out, cfg)` grades a seeded sample of documents (llmctl datasets, JSONL or Parquet
files) with a judge served over an OpenAI-compatible HTTP API (`judge_url`, `POST
{judge_url}/chat/completions`, temperature 0), or with any `GradingJudge` passed as `judge` (the
CLI's in-process model: `llmctl quality annotate --judge MODEL` without --judge-url). The prompt is a text file with a `{text}`
placeholder (`prompt`; llmctl ships resources/annotate_prompt.txt); the document's text is cut to
`max_chars`. The grade is the last "Score: N" (or "Grade: N") with N in 0-5 in the answer, or the
answer itself when it is just a digit 0-5; any other answer is kept with grade null and counted as
`unparsed`. A request that fails after `retries` more tries (connection refused, timeout, HTTP
error, a reply without an answer) is not written: the run then ends with a one-line error that
counts them, without a manifest, and the same command asks the judge again about those only.

Output: a dataset (`id`, `text`, `grade` int or null, `answer`, `judge`) in sample order. Each
answer is appended to OUT/_tasks/answers.jsonl as it arrives, so a killed run resumes without
asking the judge again about a document it answered.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import xxhash

from llmctl.config import runtime
from llmctl.data.document import Document
from llmctl.data.extract import ExtractConfig, input_kind, read_input
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.dataset import TASKS_DIR, Dataset, StageOutput, close_shards, fingerprint_file, shard_name
from llmctl.store.integrity import file_sha256
from llmctl.store.lock import exclusive_output

PROMPT = Path(__file__).parent / "resources" / "annotate_prompt.txt"
ANSWERS = "answers.jsonl"
GRADES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("grade", pa.int8()),
        pa.field("answer", pa.string()),
        pa.field("judge", pa.string()),
    ]
)
_SCORE = re.compile(r"(?:score|grade)\s*[:=]?\s*\**\s*([0-5])(?!\d|\.\d)", re.I)


@dataclass
class AnnotateConfig:
    judge: str = ""  # the model name the judge server is asked for; without judge_url, a local model to load
    judge_url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    prompt: str = ""  # a text file with {text}; "" = llmctl's resources/annotate_prompt.txt
    sample: int = 0  # documents to grade, a seeded sample (0 = all)
    seed: int = 0
    max_chars: int = 3000  # document text cut to this many characters in the prompt
    max_tokens: int = 256  # the judge's answer length
    timeout: float = runtime(60.0)  # seconds per request
    retries: int = runtime(2)  # more tries of a failed request
    concurrency: int = runtime(4)  # requests in flight
    batch_size: int = runtime(8)  # a local judge: documents generated for at once
    text_field: str = "text"  # JSONL/Parquet column with the text


def parse_grade(answer: str) -> int | None:
    """The grade 0-5 an answer gives (its last "Score: N"), else None."""
    found = _SCORE.findall(answer)
    if found:
        return int(found[-1])
    s = answer.strip().rstrip(".")
    return int(s) if s in {"0", "1", "2", "3", "4", "5"} else None


def read_docs(paths: list[str], text_field: str) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(id, text) of every document of `paths` (llmctl datasets, JSONL, Parquet), and their lineage."""
    docs: list[tuple[str, str]] = []
    lineage = []
    for p in paths:
        if fs.to_path(p).is_dir():
            ds = Dataset.open(p, columns=["id", "text"])
            lineage.append(ds.lineage())
            docs += [(r["id"], r["text"]) for r in ds.iter_rows(["id", "text"])]
        elif fs.to_path(p).is_file() and input_kind(p) in ("jsonl", "parquet"):
            lineage.append({"path": fs.display(p), "fingerprint": fingerprint_file(p)})
            recs = read_input(p, str(p), ExtractConfig(text_field=text_field))
            docs += [(r.id, r.text) for r in recs if isinstance(r, Document)]
        else:
            raise UsageError(f"{p}: expected an llmctl dataset, a .jsonl[.gz] or a .parquet file")
    return docs, lineage


def sample(docs: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """`n` documents (all when 0), chosen by a seeded hash of their id: the same for any input order."""
    unique = {d[0]: d for d in docs}
    order = sorted(unique, key=lambda i: (xxhash.xxh3_64_intdigest(i.encode("utf-8"), seed=seed), i))
    return [unique[i] for i in (order[:n] if n else order)]


class GradingJudge(Protocol):
    """What annotate asks: `answers(prompts)` yields one answer per prompt, in order, as they come
    (None for a prompt it could not answer, with the reason in `last_error`); `where` names the
    judge in messages."""

    where: str
    last_error: str

    def answers(self, prompts: list[str]) -> Iterator[str | None]: ...


class Judge:
    """An OpenAI-compatible chat endpoint, asked one document at a time (`concurrency` in flight)."""

    def __init__(self, cfg: AnnotateConfig):
        self.cfg = cfg
        self.url = cfg.judge_url.rstrip("/") + "/chat/completions"
        self.where = self.url
        self.last_error = ""

    def answers(self, prompts: list[str]) -> Iterator[str | None]:
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            yield from pool.map(self.ask, prompts)

    def ask(self, prompt: str) -> str | None:
        """The judge's answer, or None when every try failed."""
        body = {
            "model": self.cfg.judge,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.cfg.max_tokens,
        }
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.cfg.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout) as r:
                    content = json.loads(r.read())["choices"][0]["message"]["content"]
                if isinstance(content, str):
                    return content
            except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError, TypeError) as e:
                self.last_error = f"{type(e).__name__}: {e}".splitlines()[0]
            if attempt < self.cfg.retries:
                time.sleep(min(2.0, 0.2 * 2**attempt))
        return None


def _template(cfg: AnnotateConfig) -> tuple[str, Path]:
    path = Path(cfg.prompt) if cfg.prompt else PROMPT
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompt {path}: cannot read it ({e})") from None
    if "{text}" not in text:
        raise UsageError(f"--prompt {path}: has no {{text}} placeholder for the document")
    return text, path


def _answered(log: Path) -> dict[str, str]:
    """The answers of an earlier, killed run (a cut last line is ignored)."""
    done: dict[str, str] = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["id"]] = rec["answer"]
            except (ValueError, KeyError, TypeError):
                continue
    return done


def prompt_for(template: str, text: str, max_chars: int) -> str:
    """The grading prompt of one document: the template with its text, cut to `max_chars`."""
    return template.replace("{text}", text[:max_chars])


@exclusive_output("out")  # no discard: a killed run's answers are what it resumes from
def annotate(
    inputs: list[str],
    out: str | Path,
    cfg: AnnotateConfig,
    overwrite: bool = False,
    judge: GradingJudge | None = None,
) -> dict[str, Any]:
    """Grade a sample of the documents of `inputs` with the judge; returns the output manifest.

    `judge`: the judge to ask (default: the HTTP server at `cfg.judge_url`)."""
    if judge is None and not cfg.judge_url:
        raise UsageError(
            "quality annotate needs --judge MODEL (a local model) or --judge-url URL (an OpenAI-compatible server)"
        )
    if cfg.sample < 0 or cfg.concurrency < 1 or cfg.retries < 0 or cfg.batch_size < 1:
        raise UsageError("--sample must be >= 0, concurrency and batch_size >= 1, retries >= 0")
    template, prompt_path = _template(cfg)
    docs, lineage = read_docs(inputs, cfg.text_field)
    lineage.append(
        {"path": fs.display(prompt_path), "stage": "annotate.prompt", "fingerprint": file_sha256(str(prompt_path))}
    )
    todo = sample(docs, cfg.sample, cfg.seed)
    if not todo:
        raise UsageError("no documents to grade in " + ", ".join(inputs))
    stage = StageOutput(fs.to_path(out), "quality.annotate", cfg, lineage, overwrite=overwrite)
    if stage.complete:
        return stage.manifest  # type: ignore[return-value]
    log = stage.path / TASKS_DIR / ANSWERS
    answers = _answered(log)
    resumed = len(answers)
    judge = judge if judge is not None else Judge(cfg)
    asking = [(i, t) for i, t in todo if i not in answers]
    failed = 0
    started = time.time()
    with open(log, "a", encoding="utf-8") as f:
        prompts = [prompt_for(template, t, cfg.max_chars) for _, t in asking]
        for (doc_id, _), answer in zip(asking, judge.answers(prompts)):
            if answer is None:
                failed += 1
                continue
            answers[doc_id] = answer
            f.write(json.dumps({"id": doc_id, "answer": answer}) + "\n")
            f.flush()
    if failed:
        raise UsageError(
            f"{failed} of {len(asking)} requests to {judge.where} failed ({judge.last_error}); the {len(answers)} "
            "answers so far are kept: run the same command again to ask about the rest"
        )
    rows = [
        {"id": i, "text": t, "grade": parse_grade(answers[i]), "answer": answers[i], "judge": cfg.judge}
        for i, t in todo
        if i in answers
    ]
    name = shard_name(0)
    w = stage.shard_writer(f"{name}.parquet", GRADES_SCHEMA)
    for r in rows:
        w.write(r)
    stage.finish_task(name, close_shards(f"{name}.parquet", data=w))
    grades = [r["grade"] for r in rows]
    stats = {
        "sampled": len(todo),
        "graded": sum(g is not None for g in grades),
        "unparsed": sum(g is None for g in grades),
        "resumed_answers": resumed,
        "grades": {str(g): grades.count(g) for g in range(6)},
    }
    return stage.finalize(
        [name], GRADES_SCHEMA, stats=stats, timings={"judge_seconds": round(time.time() - started, 3)}
    )
