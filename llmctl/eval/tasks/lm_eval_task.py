"""`lm-eval:NAME[,NAME...]`: lm-evaluation-harness tasks run on the model llmctl has loaded.

`HarnessLM` implements lm-eval's model interface (`loglikelihood`, `loglikelihood_rolling`,
`generate_until`) on `llmctl.eval.lm.LM`: the same request encoding as lm-eval's `hf` model
(context/continuation split at trailing whitespace, an empty context scored after BOS, else EOS;
rolling windows from `lm_eval.utils`; contexts left-truncated to leave `max_gen_toks`), scoring
through `LM.loglikelihood` and generation through `LM.generate_many`, so the numbers do not
depend on the batch size. Tasks come from lm-eval's registry or a folder of task YAMLs
(`include`); result rows keep lm-eval's metric keys (`acc,none`) and standard errors.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.eval.base import Samples, file_lineage

SAMPLES_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("doc_id", pa.int64()),
        ("arguments", pa.string()),  # JSON: the requests' arguments
        ("resps", pa.string()),  # JSON: the model's raw responses
        ("filtered_resps", pa.string()),
        ("target", pa.string()),
        ("metrics", pa.string()),  # JSON: this item's metric values
    ]
)


@dataclass
class LmEvalConfig:
    tasks: list[str] = field(default_factory=list)  # lm-eval task (or group) names; set by --task lm-eval:NAME
    include: str = ""  # a folder of task YAMLs (lm-eval's --include_path)
    shots: int | None = None  # lm-eval's --num_fewshot (None: the task's own default)
    limit: int = 0  # lm-eval's --limit: items per task (0 = all)
    seed: int | None = None  # all four of lm-eval's seeds (None: lm-eval's defaults 0, 1234, 1234, 1234)
    chat: bool = False  # --chat: lm-eval's --apply_chat_template --fewshot_as_multiturn (shots as earlier turns)


def _import_lm_eval() -> Any:
    try:
        import lm_eval  # lm-eval: optional, heavy; only for this task
    except ImportError:
        raise UsageError("task lm-eval:... needs lm-eval: pip install lm-eval") from None
    return lm_eval


def harness_lm(lm: Any, batch_size: int, seed: int = 0, progress: Any = None, chat: bool = False) -> Any:
    """An lm-eval `LM` over llmctl's `lm` (built here so lm-eval is imported only when used). With
    `chat`, contexts are the chat template's text and its markers are read as special tokens, as
    lm-eval's `hf` model encodes them."""
    if chat and (lm.codec.chat_text is None or lm.codec.encode_special is None):
        raise UsageError(f"{lm.name}: its tokenizer has no chat template; --chat needs one")
    _import_lm_eval()
    from lm_eval.api.model import LM as _HarnessBase  # lm-eval: optional, imported with the task
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # likewise

    class HarnessLM(_HarnessBase):
        def __init__(self) -> None:
            super().__init__()
            self.lm, self.bs, self.seed = lm, batch_size, seed
            c = lm.codec
            self.prefix = c.bos_id if c.bos_id is not None else c.eos_id
            self.enc = c.encode_special if chat else c.encode
            self._ctx_ids: dict[str, list[int]] = {}

        @property
        def tokenizer_name(self) -> str:
            return self.lm.codec.fingerprint or str(self.lm.name)

        def chat_template(self, chat_template: bool | str = False) -> str:
            return self.lm.codec.chat_template if chat_template else ""

        def apply_chat_template(self, chat_history: list, add_generation_prompt: bool = True) -> str:
            return self.lm.codec.chat_text(list(chat_history), add_generation_prompt)

        def _advance(self, n: int, tokens: int = 0) -> None:
            if progress:
                progress.advance(n, tokens)

        def _pair(self, ctx: str, cont: str) -> tuple[list[int], list[int]]:
            enc = self.enc
            if ctx == "":
                return [self.prefix], enc(cont)
            n = len(ctx) - len(ctx.rstrip())
            if n:
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            if ctx not in self._ctx_ids:  # a question's choices share their context: encode it once
                self._ctx_ids[ctx] = enc(ctx)
            whole, c = enc(ctx + cont), self._ctx_ids[ctx]
            return list(c), whole[len(c) :]

        def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
            pairs = [self._pair(*r.args) for r in requests]
            self._ctx_ids.clear()
            return self.lm.loglikelihood(pairs, self.bs, self._advance)

        def loglikelihood_rolling(self, requests: list) -> list[float]:
            pairs, owner = [], []
            for i, r in enumerate(requests):
                toks = self.enc(r.args[0])
                for w in get_rolling_token_windows(toks, self.prefix, self.lm.max_len, 1):
                    pairs.append(make_disjoint_window(w))
                    owner.append(i)
            out = [0.0] * len(requests)
            for (ll, _), i in zip(self.lm.loglikelihood(pairs, self.bs, self._advance), owner):
                out[i] += ll
            return out

        def generate_until(self, requests: list) -> list[str]:
            groups: dict[tuple, list[tuple[int, str, int]]] = {}
            for i, r in enumerate(requests):
                ctx, kw = r.args
                kw = dict(kw or {})
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                eos_text = self.lm.codec.decode([self.lm.codec.eos_id])
                if eos_text and eos_text not in until:
                    until.append(eos_text)
                sample = bool(kw.get("do_sample", False)) and float(kw.get("temperature", 1.0) or 0.0) > 0
                temp = float(kw.get("temperature", 1.0)) if sample else 0.0
                key = (tuple(until), int(kw.get("max_gen_toks", 256)), temp, float(kw.get("top_p", 1.0) or 1.0))
                groups.setdefault(key, []).append((i, ctx, int(getattr(r, "doc_id", i) or 0)))
            out = [""] * len(requests)
            for (until, mx, temp, top_p), items in groups.items():
                keep = max(1, self.lm.max_len - mx)
                prompts = [self.enc(c)[-keep:] for _, c, _ in items]
                toks = self.lm.generate_many(
                    prompts,
                    mx,
                    temperature=temp,
                    top_p=top_p,
                    seeds=[self.seed + d for _, _, d in items],
                    stop_text=list(until),
                    batch_size=self.bs,
                    on_batch=self._advance,
                )
                for (i, _, _), t in zip(items, toks):
                    s = self.lm.codec.decode(t)
                    for u in until:
                        s = s.split(u)[0]
                    out[i] = s
            return out

    return HarnessLM()


@functools.lru_cache(maxsize=4)
def _manager(include: str, defaults: bool) -> Any:
    _import_lm_eval()
    from lm_eval.tasks import TaskManager  # lm-eval: optional, imported with the task

    return TaskManager(include_path=include or None, include_defaults=defaults)


def _task_manager(cfg: LmEvalConfig) -> Any:
    """lm-eval's TaskManager over `include` alone when it holds every task asked for (indexing
    lm-eval's own few thousand YAMLs takes tens of seconds), else over both."""
    if cfg.include and not os.path.isdir(cfg.include):
        raise UsageError(f"--lm-eval-include {cfg.include}: no such directory")
    if cfg.include:
        tm = _manager(os.path.abspath(cfg.include), False)
        if all(n in tm.all_tasks for n in cfg.tasks):
            return tm
    return _manager(os.path.abspath(cfg.include) if cfg.include else "", True)


def check(cfg: LmEvalConfig) -> None:
    """Unknown task names and a missing include folder are one line, before the model loads."""
    if not cfg.tasks:
        raise UsageError("task lm-eval needs task names: --task lm-eval:NAME[,NAME...]")
    tm = _task_manager(cfg)
    known = set(tm.all_tasks)
    for name in cfg.tasks:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            where = f" (lm-eval's registry and {cfg.include})" if cfg.include else " (lm-eval's registry)"
            raise UsageError(f"unknown lm-eval task {name}{where}{hint}")


def _dataset_error(e: BaseException, tm: Any, names: list[str]) -> UsageError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    where = ""
    for n in names:
        entry = getattr(tm, "task_index", {}).get(n)
        cfg = getattr(entry, "cfg", None) or {}
        if isinstance(cfg, dict) and cfg.get("dataset_path"):
            where = f" dataset {cfg['dataset_path']}" + (f"/{cfg['dataset_name']}" if cfg.get("dataset_name") else "")
            break
    return UsageError(
        f"lm-eval task {','.join(names)} needs{where or ' its dataset'}, which could not be loaded ({msg}); "
        "download it, or copy the task YAML into --lm-eval-include DIR with dataset_path: json (or csv) "
        "and dataset_kwargs: {data_files: ...} pointing at local files"
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def run(
    lm: Any, cfg: LmEvalConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Samples]:
    """lm-eval's `simple_evaluate` on `lm`; rows `task=NAME, metric="acc,none"` with lm-eval's stderrs
    (`n` = documents evaluated), samples one row per document."""
    lm_eval = _import_lm_eval()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    tm = _task_manager(cfg)
    seeds = (0, 1234, 1234, 1234) if cfg.seed is None else (cfg.seed,) * 4
    if progress:
        progress.start("lm-eval:" + ",".join(cfg.tasks), 0)
    hlm = harness_lm(lm, batch_size, seeds[0], progress, cfg.chat)
    try:
        r = lm_eval.simple_evaluate(
            model=hlm,
            tasks=list(cfg.tasks),
            num_fewshot=cfg.shots,
            limit=cfg.limit or None,
            task_manager=tm,
            log_samples=True,
            random_seed=seeds[0],
            numpy_random_seed=seeds[1],
            torch_random_seed=seeds[2],
            fewshot_random_seed=seeds[3],
            apply_chat_template=cfg.chat,
            fewshot_as_multiturn=cfg.chat,
        )
    except UsageError:
        raise
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as e:
        raise _dataset_error(e, tm, list(cfg.tasks)) from None
    except Exception as e:
        if type(e).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
            raise _dataset_error(e, tm, list(cfg.tasks)) from None
        raise
    rows: list[dict[str, Any]] = []
    n_docs = {t: int(v.get("effective", 0)) for t, v in r.get("n-samples", {}).items()}
    for task, res in r["results"].items():
        for key, val in res.items():
            if "," not in key or "_stderr," in key or _num(val) is None:
                continue
            metric, filt = key.split(",", 1)
            err = _num(res.get(f"{metric}_stderr,{filt}"))
            rows.append({"task": task, "metric": key, "value": float(val), "stderr": err, "n": n_docs.get(task, 0)})
    for task, docs in r.get("samples", {}).items():  # multiple choice: one request per choice
        if r.get("configs", {}).get(task, {}).get("output_type") == "multiple_choice" and docs:
            chance = [1.0 / max(1, len(d.get("arguments") or [])) for d in docs]
            rows.append(
                {"task": task, "metric": "chance", "value": sum(chance) / len(chance), "stderr": None, "n": len(docs)}
            )
    samples = []
    for task, docs in r.get("samples", {}).items():
        for d in docs:
            samples.append(
                {
                    "task": task,
                    "doc_id": int(d.get("doc_id", 0)),
                    "arguments": json.dumps(d.get("arguments"), default=str, ensure_ascii=False),
                    "resps": json.dumps(d.get("resps"), default=str, ensure_ascii=False),
                    "filtered_resps": json.dumps(d.get("filtered_resps"), default=str, ensure_ascii=False),
                    "target": str(d.get("target")),
                    "metrics": json.dumps({m: d[m] for m in d.get("metrics", []) if m in d}, default=str),
                }
            )
    lineage = []
    if cfg.include:
        lineage += [file_lineage(p) for p in sorted(_yaml_files(cfg.include))]
    return rows, lineage, Samples(SAMPLES_SCHEMA, samples)


def _yaml_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.endswith((".yaml", ".yml"))]
    return out
