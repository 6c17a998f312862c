"""Rollouts for `llmctl rl`: prompts, sampling with the shared engine, and the on-policy batch source.

The loop (llmctl.train.loop) asks its `batches` for micro-batches; `RolloutBatches` is that
source for an on-policy trainer. When its plan is used up it runs a rollout phase with the
current policy: this rank's next prompts (a seeded permutation per epoch of the prompts, rank r
taking every world-th prompt of a global slice, so the prompts of a rollout do not depend on
the world size), G completions each from `llmctl.model.generate.generate_batch`, rewards, and the
frozen quantities the losses need (old log-probs, reference log-probs, values, advantages; see
`algo.prepare`). Then it serves `epochs` passes over the rollout in seeded mini-batch orders,
one optimizer step per `batch_size` completions, and starts the next rollout when they are done.

With `--dynamic-sampling` a rollout keeps only groups whose rewards differ, drawing further
prompts (see `RolloutBatches._draw`); with `--tool` a tool's output is fed to a sequence that calls it
while the others go on sampling (llmctl.train.rl.tools), and the rollout's `lmask` (the loss mask; also
without tokens of truncated completions under `--mask-truncated`) leaves the tool tokens out.

Old log-probs are computed in exactly the micro-batches the first epoch trains on (same rows,
same padded width), so at the first micro-batch of a rollout the ratio pi/pi_old is exactly 1.

Its state (the prompt position, the sampling generator, the rollout tensors, the plan and the
cursor, the adaptive KL coefficient) goes into every checkpoint: a resume continues mid-rollout
with the same numbers as the uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmctl.data.chat_data import read_rows, split_of, to_messages
from llmctl.errors import UsageError
from llmctl.model.generate import generate_batch
from llmctl.store.dataset import atomic_write_text
from llmctl.train import distributed as D
from llmctl.train.rl import core as R
from llmctl.train.rl.tools import ToolBox, completion_text, generate_with_tools

SAMPLES = "samples.jsonl"


@dataclass
class Prompt:
    index: int  # row index in the prompts dataset
    messages: list[dict[str, str]]
    ids: list[int]
    row: dict[str, Any]


PROMPT_COLUMNS = ("prompt", "question", "instruction")  # the first one a row has is its prompt


def prompt_messages(row: dict[str, Any], where: str, index: int) -> list[dict[str, str]]:
    if "messages" in row and row["messages"]:
        msgs = to_messages(row["messages"])
        return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs  # the reply is what RL samples
    text = next((row[k] for k in PROMPT_COLUMNS if row.get(k) is not None), None)
    if isinstance(text, (list, tuple)) and text:  # a conversation (a prefs dataset's prompt)
        return to_messages(text)
    if not isinstance(text, str) or not text:
        raise UsageError(f"{where}: row {index} has an empty prompt")
    return to_messages(text)


def load_prompts(
    path: str | Path, tok: Any, max_prompt_len: int, val_fraction: float, seed: int
) -> tuple[list[Prompt], list[Prompt], dict[str, Any], dict[str, int]]:
    """(train prompts, held-out prompts, lineage, counts); one-line errors for unusable data."""
    rows, lineage = read_rows(path)
    if not rows:
        raise UsageError(f"{path}: no prompts")
    cols = set(rows[0])
    if not cols & {"messages", *PROMPT_COLUMNS}:
        raise UsageError(
            f"{path}: rl needs a `prompt` (or `messages`, GSM8K's `question`, AlpacaEval's "
            "`instruction`) column; "
            f"found {', '.join(sorted(cols)) or 'none'}"
        )
    out: dict[str, list[Prompt]] = {"train": [], "val": []}
    truncated = 0
    for i, r in enumerate(rows):
        msgs = prompt_messages(r, str(path), i)
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
        if len(ids) > max_prompt_len:
            ids, truncated = ids[-max_prompt_len:], truncated + 1
        out[split_of(r, msgs, val_fraction, seed)].append(Prompt(i, msgs, ids, r))
    if not out["train"]:
        raise UsageError(f"{path}: no training prompt ({len(out['val'])} held out)")
    counts = {"prompts": len(rows), "train": len(out["train"]), "val": len(out["val"]), "truncated": truncated}
    return out["train"], out["val"], lineage, counts


def sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows: input_ids (B, T), completion token ids and mask (B, Tc)."""
    t = max(len(p) + len(c) for p, c in zip(prompts, completions))
    tc = max(1, max(len(c) for c in completions))
    ids = torch.tensor(
        [p + c + [pad_id] * (t - len(p) - len(c)) for p, c in zip(prompts, completions)], dtype=torch.long
    )
    comp = torch.tensor([c + [pad_id] * (tc - len(c)) for c in completions], dtype=torch.long)
    cmask = torch.tensor([[True] * len(c) + [False] * (tc - len(c)) for c in completions], dtype=torch.bool)
    # positions whose next token is a completion token
    keep = torch.tensor(
        [
            [False] * (len(p) - 1) + [True] * len(c) + [False] * (t - len(p) - len(c) + 1)
            for p, c in zip(prompts, completions)
        ],
        dtype=torch.bool,
    )
    return {"input_ids": ids, "keep": keep, "completion": comp, "cmask": cmask}


def completion_logps(model: torch.nn.Module, b: dict[str, torch.Tensor], values: bool = False, entropy: bool = False):
    """(B, Tc) log-probs of the completion tokens, then (when asked) the value head's (B, Tc) values and
    the policy's (B, Tc) entropy at each completion position (detached); a tuple when more than one.

    The lm head runs on the positions in `keep` only; they are each row's completion positions in
    order, so the flat results fill `cmask` row-major."""
    out = model(b["input_ids"], keep=b["keep"], return_values=True) if values else model(b["input_ids"], keep=b["keep"])
    logits, v = out if values else (out, None)
    cm = b["cmask"]
    lsm = torch.log_softmax(logits.float(), -1)
    lp = lsm.gather(-1, b["completion"][cm][:, None])[:, 0]
    logp = torch.zeros(cm.shape, dtype=lp.dtype, device=lp.device).masked_scatter(cm, lp)
    res = [logp]
    if values:
        res.append(torch.zeros(cm.shape, dtype=v.dtype, device=v.device).masked_scatter(cm, v.float()))
    if entropy:
        with torch.no_grad():
            ent = -(lsm.exp() * lsm).sum(-1)
        res.append(torch.zeros(cm.shape, dtype=ent.dtype, device=ent.device).masked_scatter(cm, ent))
    return res[0] if len(res) == 1 else tuple(res)


class PromptStream:
    """This rank's prompts, `n` a rollout over all ranks; a seeded permutation per epoch; resumable."""

    def __init__(self, n_prompts: int, per_rollout: int, seed: int, rank: int, world: int):
        if n_prompts < per_rollout:
            raise UsageError(f"only {n_prompts} training prompts for rollouts of {per_rollout} prompts")
        self.n, self.k, self.seed, self.rank, self.world = n_prompts, per_rollout, seed, rank, world
        self.epoch, self.pos = 0, 0

    def _perm(self) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def take(self) -> list[int]:
        if self.pos + self.k > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        sl = self._perm()[self.pos : self.pos + self.k]
        self.pos += self.k
        return sl[self.rank :: self.world]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])


FLAT_ROLLOUTS = 3  # rollouts in a row with no reward signal before rl says so


class RolloutBatches:
    """The loop's `batches` for an on-policy trainer (see the module docstring).

    `algo` supplies `prepare(model, rollout, plan0) -> (tensors, stats)`: the frozen per-rollout
    tensors (old log-probs computed over the micro-batches of `plan0`) and the rollout's metrics."""

    def __init__(
        self,
        model: torch.nn.Module,
        prompts: list[Prompt],
        tok: Any,
        cfg: Any,
        algo: Any,
        rewards: Callable,
        accum: int,
    ):
        d = D.info()
        self.model, self.prompts, self.tok, self.cfg, self.algo, self.rewards = model, prompts, tok, cfg, algo, rewards
        self.g = cfg.group
        self.stream = PromptStream(len(prompts), cfg.rollout_prompts, cfg.train.seed, d.rank, d.world)
        self.gen = torch.Generator(device=d.device).manual_seed(cfg.train.seed + 1000 + d.rank)
        self.mb, self.accum, self.device = cfg.train.micro_batch, accum, d.device
        self.rollout: dict[str, torch.Tensor] = {}
        self.plan: list[list[int]] = []
        self.cursor, self.rollouts, self.served = 0, 0, 0
        self.samples: list[dict[str, Any]] = []
        self.gen_tokens_per_s = 0.0
        self.flat, self.flat_warned = 0, False  # rollouts in a row whose every group had equal rewards (GRPO)
        self.tools = make_toolbox(cfg)

    # -- the loop's interface
    def __next__(self) -> dict[str, torch.Tensor]:
        if self.cursor >= len(self.plan):
            self._roll()
        idx = torch.tensor(self.plan[self.cursor])
        self.cursor += 1
        self.served += 1
        b = {k: v[idx] for k, v in self.rollout.items() if v.dim() > 0}
        b.update({k: v for k, v in self.rollout.items() if v.dim() == 0})  # the rollout's metrics
        return b

    def state_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream.state_dict(),
            "gen": self.gen.get_state(),
            "rollout": dict(self.rollout),
            "plan": torch.tensor(self.plan, dtype=torch.long) if self.plan else torch.zeros(0, dtype=torch.long),
            "cursor": self.cursor,
            "rollouts": self.rollouts,
            "served": self.served,
            "algo": self.algo.state_dict(),
            "samples": json.dumps(self.samples),
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.stream.load_state_dict(st["stream"])
        self.gen.set_state(st["gen"])
        self.rollout = dict(st["rollout"])
        self.plan = st["plan"].tolist()
        self.cursor, self.rollouts, self.served = int(st["cursor"]), int(st["rollouts"]), int(st["served"])
        self.algo.load_state_dict(st["algo"])
        self.samples = json.loads(st["samples"])

    # -- a rollout phase
    def _sample(self, items: list[Prompt]) -> dict[str, Any]:
        """Completions of `items` with their rewards (the overlong penalty included), as lists."""
        cfg, tok = self.cfg, self.tok
        out, model_mask = sample(self.model, [p.ids for p in items], cfg, tok, self.gen, self.tools, cfg.temperature)
        comps = [c + ([s] if s is not None else []) for c, s in zip(out.tokens, out.stops)]  # the stop token is trained
        texts = [completion_text(tok, c) if self.tools else tok.decode(c) for c in out.tokens]
        total, per = self.rewards(
            [p.messages if len(p.messages) > 1 else p.messages[0]["content"] for p in items],
            texts,
            [p.row for p in items],
            [p.index for p in items],
        )
        if cfg.overlong_penalty:
            pen = R.overlong_penalty(torch.tensor([len(c) for c in comps]), cfg.max_new_tokens, cfg.overlong_penalty)
            per["overlong"] = pen.tolist()
            total = [t + q for t, q in zip(total, per["overlong"])]
        if model_mask is not None:
            model_mask = [m + ([True] if s is not None else []) for m, s in zip(model_mask, out.stops)]
        return {
            "items": items,
            "comps": comps,
            "texts": texts,
            "total": total,
            "per": per,
            "ended": list(out.ended),
            "model_mask": model_mask,
            "tokens": out.new_tokens,
            "seconds": out.seconds,
        }

    def _draw(self) -> tuple[dict[str, Any], dict[str, float]]:
        """This rank's rollout: one draw of prompts, or with dynamic sampling, groups whose rewards all
        agree dropped and further prompts drawn (all ranks draw together) until every rank has its
        full share of groups with a reward spread or `max_draws` draws were made (then the flat groups
        of the last draws fill the gap, counted as dynamic/flat_kept)."""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic_sampling:
            return self._sample([p for i in self.stream.take() for p in [self.prompts[i]] * g]), {}
        want = cfg.rollout_prompts // D.info().world
        kept: list[dict[str, Any]] = []
        spare: list[dict[str, Any]] = []
        draws = drawn = 0
        tokens = seconds = 0.0
        while True:
            draws += 1
            got = self._sample([p for i in self.stream.take() for p in [self.prompts[i]] * g])
            tokens, seconds = tokens + got["tokens"], seconds + got["seconds"]
            for k in range(len(got["items"]) // g):
                grp = _select(got, range(k * g, (k + 1) * g))
                drawn += 1
                vals = grp["total"]
                (kept if max(vals) > min(vals) else spare).append(grp)
            short = torch.tensor([float(len(kept) < want)])
            D.all_reduce_sum(short)
            if short.item() == 0 or draws >= cfg.max_draws:
                break
        flat_kept = max(0, want - len(kept))
        groups = kept[:want] + spare[:flat_kept]
        merged = {k: [x for grp in groups for x in grp[k]] for k in ("items", "comps", "texts", "total", "ended")}
        merged["per"] = {n: [x for grp in groups for x in grp["per"][n]] for n in groups[0]["per"]}
        merged["model_mask"] = [x for grp in groups for x in grp["model_mask"]] if groups[0]["model_mask"] else None
        merged["tokens"], merged["seconds"] = tokens, seconds
        cnt = torch.tensor([float(drawn), float(draws), float(flat_kept)])
        D.all_reduce_sum(cnt)
        return merged, {
            "dynamic/groups_drawn": cnt[0].item(),
            "dynamic/draws": cnt[1].item() / D.info().world,
            "dynamic/flat_kept": cnt[2].item(),
        }

    @torch.no_grad()
    def _roll(self) -> None:
        cfg, tok = self.cfg, self.tok
        was_training = self.model.training
        got, dyn = self._draw()
        self.model.train(was_training)
        items, comps, texts, total, per = got["items"], got["comps"], got["texts"], got["total"], got["per"]
        ro = sequences([p.ids for p in items], comps, tok.pad_id)
        ro["scores"] = torch.tensor(total, dtype=torch.float32)
        ro["ended"] = torch.tensor(got["ended"])
        if got["model_mask"] is not None or cfg.mask_truncated:
            lmask = ro["cmask"].clone()
            if got["model_mask"] is not None:  # tool output: no loss, no KL
                for i, m in enumerate(got["model_mask"]):
                    lmask[i, : len(m)] &= torch.tensor(m, dtype=torch.bool)
            if cfg.mask_truncated:  # completions that hit max_new_tokens: no loss
                lmask &= ro["ended"][:, None]
            ro["lmask"] = lmask
        n = len(items)
        g = torch.Generator().manual_seed(cfg.train.seed + 7919 * self.rollouts + D.info().rank)
        perms = [torch.randperm(n, generator=g).tolist() for _ in range(cfg.epochs)]
        plan = [perm[s : s + self.mb] for perm in perms for s in range(0, n, self.mb)]
        ro = {k: v.to(self.device) for k, v in ro.items()}
        tensors, stats = self.algo.prepare(self.model, ro, plan[: n // self.mb])
        self.model.train(was_training)
        lengths = [len(c) for c in comps]  # with the stop token, as TRL counts
        stats.update({f"rewards/{k}/mean": sum(v) / len(v) for k, v in per.items()})
        tps = got["tokens"] / max(got["seconds"], 1e-9)
        stats.update(
            {
                "completions/mean_length": sum(lengths) / n,
                "completions/max_length": float(max(lengths)),
                "completions/min_length": float(min(lengths)),
                "completions/clipped_ratio": 1 - sum(got["ended"]) / n,
                "gen_tokens_per_s": tps,
                **dyn,
            }
        )
        if self.tools is not None:
            stats.update(self.tools.stats())
        self.gen_tokens_per_s = tps
        self._check_signal(stats)
        self.rollout = {**ro, **tensors, **{k: torch.tensor(float(v), device=self.device) for k, v in stats.items()}}
        self.plan, self.cursor = plan, 0
        self.rollouts += 1
        self.samples = [
            {
                "prompt": items[i].messages[-1]["content"],
                "completion": texts[i],
                "reward": total[i],
                **{k: v[i] for k, v in per.items()},
                "prompt_index": items[i].index,
            }
            for i in range(min(len(items), cfg.log_samples))
        ]

    def _check_signal(self, stats: dict[str, float]) -> None:
        """One notice when GRPO has learned nothing from FLAT_ROLLOUTS rollouts in a row (every advantage 0)."""
        if self.g < 2 or stats.get("frac_reward_zero_std", 0.0) < 1.0:
            self.flat = 0
            return
        self.flat += 1
        if self.flat == FLAT_ROLLOUTS and not self.flat_warned:
            self.flat_warned = True
            D.print0(
                f"rl: notice: in {FLAT_ROLLOUTS} rollouts in a row, each prompt's {self.g} completions got the same "
                f"reward (mean {stats['reward']:.3g}), so every advantage is 0 and the policy is not changing. "
                "Look at the completions (samples.jsonl, written at each evaluation): a reward that never "
                "fires needs a model that sometimes succeeds (SFT on the task first, raise --temperature or "
                "--num-generations); one that always fires has nothing left to teach"
            )


def _select(got: dict[str, Any], idx: range) -> dict[str, Any]:
    """The rows `idx` of a `_sample` result."""
    out = {k: [got[k][i] for i in idx] for k in ("items", "comps", "texts", "total", "ended")}
    out["per"] = {n: [v[i] for i in idx] for n, v in got["per"].items()}
    out["model_mask"] = [got["model_mask"][i] for i in idx] if got["model_mask"] is not None else None
    out["tokens"], out["seconds"] = got["tokens"], got["seconds"]
    return out


def make_toolbox(cfg: Any) -> ToolBox | None:
    """The run's tools (cfg.tools), or None without any."""
    if not cfg.tools:
        return None
    return ToolBox(cfg.tools, cfg.max_tool_calls, cfg.tool_timeout, cfg.tool_max_output, cfg.tool_wait_steps)


def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    cfg: Any,
    tok: Any,
    gen: torch.Generator,
    tools: ToolBox | None,
    temperature: float,
) -> tuple[Any, list[list[bool]] | None]:
    """(generate_batch's result, which completion tokens the model wrote) for the prompts: plain
    sampling (None: all of them), or with tool calls when `tools` is given."""

    def gen_fn(prefixes: list[list[int]], max_new: int, **kw: Any) -> Any:
        return generate_batch(
            model,
            prefixes,
            max_new,
            temperature,
            cfg.top_k or None,
            cfg.top_p if cfg.top_p < 1 else None,
            generator=gen,
            stop_ids=tok.stop_ids,
            pad_id=tok.pad_id,
            **kw,
        )

    if tools is None:
        return gen_fn(prompts, cfg.max_new_tokens), None
    return generate_with_tools(gen_fn, prompts, cfg.max_new_tokens, tok, tools)


def write_samples(run_dir: Path, step: int, kind: str, samples: list[dict[str, Any]]) -> None:
    """Append a step's samples to RUN/samples.jsonl (lines of a later step, left by a killed run, are dropped)."""
    path = run_dir / SAMPLES
    kept = []
    if path.is_file():
        for ln in path.read_text().splitlines():
            try:
                r = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if r.get("step", 0) < step or (r.get("step") == step and r.get("kind") != kind):
                kept.append(ln)
    kept += [json.dumps({"step": step, "kind": kind, **s}) for s in samples]
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))
