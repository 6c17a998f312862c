"""`llmctl rl`: PPO against a reward model (KL to the SFT model) and GRPO with verifiable rewards.

The stage plugs into the shared loop like sft/reward/dpo do (loss_fn, batches, evaluate): the
batches are `RolloutBatches` (llmctl.train.rl.rollout), which run a rollout phase with the current
policy whenever their plan of micro-batches is used up, so one loop step is one optimizer step on
one mini-batch of `batch_size` completions, `epochs` passes per rollout. Checkpoint format, chat
template, metrics.jsonl, run directory and exact resume are the other trainers'.

Sizes: a rollout is `rollout_prompts` prompts over all ranks x G completions (`num_generations`,
GRPO; 1 for PPO); it must split into whole optimizer steps of `batch_size` completions, and each
rank's share into micro-batches of `micro_batch`. Steps per rollout = epochs x rollout / batch_size.

Held-out: every eval_every steps the policy answers up to `val_limit` held-out prompts greedily
(temperature 0, the same engine; or `val_temperature` > 0: `val_samples` sampled answers a prompt,
from the same seed at every evaluation); `val_reward` is their mean total reward (per reward:
`val_rewards/NAME`), and `val_reward_se` its standard error over prompts (of each prompt's mean).
The manifest also records `val_reward_start` and `val_reward_start_se`, the same for the
starting checkpoint, so a run shows what it learned. Sampled rollout completions and the
held-out answers with their rewards go to RUN/samples.jsonl at each evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmctl.errors import UsageError
from llmctl.model.checkpoint import resolve_checkpoint, weights_file
from llmctl.model.lora import BaseReference
from llmctl.model.reward import load_reward_model
from llmctl.store.dataset import fingerprint_file
from llmctl.train import distributed as D
from llmctl.train.finetune import load_start, run_training, use_lora
from llmctl.train.loop import TrainConfig
from llmctl.train.rl.algos import ALGOS, ValueHeadLM
from llmctl.train.rl.core import GRPO_LOSS_TYPES, IMPORTANCE_LEVELS
from llmctl.train.rl.rewards import Rewards
from llmctl.train.rl.rollout import Prompt, RolloutBatches, load_prompts, make_toolbox, sample, write_samples
from llmctl.train.rl.tools import ToolBox, call_format, completion_text
from llmctl.train.run_dir import training_stage


def _rl_train() -> TrainConfig:
    return TrainConfig(
        steps=100,
        batch_size=32,
        micro_batch=8,
        lr=1e-5,
        warmup_steps=0,
        schedule="constant",
        eval_every=20,
        ckpt_every=50,
        weight_decay=0.0,
    )


@dataclass
class RLConfig:
    algo: str = "grpo"  # a name in llmctl.train.rl.algos.ALGOS
    reward: list[str] = field(default_factory=lambda: ["rm"])  # names in llmctl.train.rl.rewards.REWARDS, MODULE:FUNC
    reward_weights: list[float] = field(default_factory=list)  # default 1 each
    reward_model: str | None = None
    num_generations: int = 4  # G completions per prompt (GRPO)
    rollout_prompts: int = 8  # prompts per rollout, over all ranks
    epochs: int | None = None  # passes over a rollout: GRPO's num_iterations (1), PPO's num_ppo_epochs (4)
    max_new_tokens: int = 64
    max_prompt_len: int = 256
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    beta: float | None = None  # KL coefficient: GRPO 0.04, PPO 0.05 (TRL's kl_coef); GRPO with 0 keeps no reference
    kl_estimator: str = "k1"  # PPO's per-token KL: k1 | k3 (GRPO always k3)
    target_kl: float | None = None  # PPO: adaptive KL controller toward this KL per completion (Ziegler et al.)
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    missing_eos_penalty: float | None = None  # PPO: subtracted from the score of a completion that did not end
    loss_type: str = "grpo"  # GRPO aggregation: a name in llmctl.train.rl.core.GRPO_LOSS_TYPES
    scale_rewards: bool = True  # GRPO: divide by the group's std (Dr. GRPO: false)
    importance_sampling: str = "token"  # GRPO: a name in llmctl.train.rl.core.IMPORTANCE_LEVELS (sequence = GSPO)
    epsilon_high: float | None = None  # GRPO: upper clip 1 + epsilon_high (DAPO's clip-higher); default cliprange
    mask_truncated: bool = False  # GRPO: completions that hit max_new_tokens without a stop get no loss
    overlong_penalty: int = 0  # DAPO's soft overlong punishment over the last N tokens before max_new_tokens (0 = off)
    dynamic_sampling: bool = False  # GRPO: drop groups with equal rewards, draw more prompts (DAPO)
    max_draws: int = 4  # dynamic sampling: at most this many prompt draws per rollout
    skip_flat_groups: bool = False  # GRPO, beta 0: completions with advantage 0 skip the training forward/backward
    tools: list[str] = field(default_factory=list)  # names in llmctl.train.rl.tools.TOOLS, MODULE:FUNC
    max_tool_calls: int = 4  # per completion; a further call ends the completion
    tool_timeout: float = 5.0  # seconds per MODULE:FUNC call
    tool_max_output: int = 1024  # bytes of a tool's output
    tool_wait_steps: int = 8  # a row waiting on a MODULE:FUNC call is parked this many steps while the others sample
    val_fraction: float = 0.05
    val_limit: int = 32
    val_temperature: float = (
        0.0  # held-out answers: 0 = greedy; > 0 samples val_samples answers a prompt (same seed each time)
    )
    val_samples: int = 1
    log_samples: int = 4  # rollout completions written to samples.jsonl at each evaluation
    train: TrainConfig = field(default_factory=_rl_train)

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise UsageError(f"unknown --algo {self.algo!r}; choose {' or '.join(ALGOS)}")
        algo = ALGOS[self.algo]
        if self.epochs is None:
            self.epochs = algo.default_epochs
        if self.beta is None:
            self.beta = algo.default_beta
        if algo.grouped and self.num_generations < 2:
            raise UsageError(
                f"--algo {self.algo} needs --num-generations 2 or more (got {self.num_generations}): "
                "a group of one completion has no advantage"
            )
        if self.kl_estimator not in ("k1", "k3"):
            raise UsageError(f"unknown kl_estimator {self.kl_estimator!r}; choose k1 or k3")
        if self.loss_type not in GRPO_LOSS_TYPES:
            raise UsageError(f"unknown loss_type {self.loss_type!r}; choose {', '.join(GRPO_LOSS_TYPES)}")
        if self.importance_sampling not in IMPORTANCE_LEVELS:
            raise UsageError(
                f"unknown importance_sampling {self.importance_sampling!r}; choose {', '.join(IMPORTANCE_LEVELS)}"
            )
        grpo_only = {
            "--importance-sampling sequence": self.importance_sampling != "token",
            "--epsilon-high": self.epsilon_high is not None,
            "--mask-truncated": self.mask_truncated,
            "--dynamic-sampling": self.dynamic_sampling,
            "--skip-flat-groups": self.skip_flat_groups,
            "--tool": bool(self.tools),
        }
        if not algo.grouped and any(grpo_only.values()):
            used = ", ".join(k for k, v in grpo_only.items() if v)
            raise UsageError(f"{used}: GRPO options (--algo grpo), not for --algo {self.algo}")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            raise UsageError(f"epsilon_high must be positive (got {self.epsilon_high})")
        if not 0 <= self.overlong_penalty < self.max_new_tokens:
            raise UsageError(
                f"--overlong-penalty {self.overlong_penalty} must be in [0, --max-new-tokens {self.max_new_tokens})"
            )
        if self.max_draws < 1:
            raise UsageError("max_draws must be 1 or more")
        if self.val_temperature < 0 or self.val_samples < 1:
            raise UsageError("val_temperature must be >= 0 and val_samples >= 1")
        if self.max_new_tokens < 1 or self.epochs < 1 or self.rollout_prompts < 1:
            raise UsageError("max_new_tokens, epochs and rollout_prompts must be positive")
        if self.beta < 0 or (self.target_kl is not None and self.target_kl <= 0):
            raise UsageError("beta must be >= 0 and target_kl > 0")
        if self.skip_flat_groups and self.beta != 0:
            raise UsageError(
                f"--skip-flat-groups needs --beta 0 (got {self.beta}): with a KL term a completion of advantage 0 "
                "still has a gradient"
            )

    @property
    def group(self) -> int:
        return self.num_generations if ALGOS[self.algo].grouped else 1

    def check_sizes(self, world: int) -> int:
        """Micro-batches per optimizer step on a rank; an error when the rollout does not split evenly."""
        n = self.rollout_prompts * self.group
        t = self.train
        if self.rollout_prompts % world:
            raise UsageError(f"rollout_prompts {self.rollout_prompts} is not a multiple of {world} rank(s)")
        if n % t.batch_size:
            raise UsageError(
                f"a rollout of {n} completions ({self.rollout_prompts} prompts x {self.group}) "
                f"is not a multiple of --batch-size {t.batch_size}"
            )
        if (n // world) % t.micro_batch:
            raise UsageError(
                f"a rank's {n // world} completions per rollout are not a multiple of --micro-batch {t.micro_batch}"
            )
        return t.grad_accum(world)


def _val_prompt(p: Prompt) -> Any:
    return p.messages if len(p.messages) > 1 else p.messages[0]["content"]


@torch.no_grad()
def held_out_reward(
    model: torch.nn.Module,
    prompts: list[Prompt],
    tok: Any,
    rewards: Rewards,
    cfg: RLConfig,
    batch: int = 32,
    tools: ToolBox | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """This rank's share of `prompts` answered greedily (or, with val_temperature > 0, val_samples
    sampled answers each, from the same seed at every evaluation), calling `tools` when given: summed
    rewards (all-reduced) -> means, and samples."""
    d = D.info()
    mine = [p for p in prompts[d.rank :: d.world] for _ in range(cfg.val_samples if cfg.val_temperature > 0 else 1)]
    names = rewards.names
    tot = torch.zeros(3 + len(names), dtype=torch.float64)
    samples = []
    per_prompt: dict[int, list[float]] = {}
    gen = torch.Generator(device=d.device).manual_seed(cfg.train.seed + 2000 + d.rank)
    for s in range(0, len(mine), batch):
        chunk = mine[s : s + batch]
        out, _ = sample(model, [p.ids for p in chunk], cfg, tok, gen, tools, cfg.val_temperature)
        texts = [completion_text(tok, t) if tools else tok.decode(t) for t in out.tokens]
        total, per = rewards([_val_prompt(p) for p in chunk], texts, [p.row for p in chunk], [p.index for p in chunk])
        length = sum(len(t) + (stop is not None) for t, stop in zip(out.tokens, out.stops))  # stop token counted
        tot += torch.tensor([sum(total), len(chunk), length] + [sum(per[n]) for n in names], dtype=torch.float64)
        for p, r in zip(chunk, total):
            per_prompt.setdefault(p.index, []).append(r)
        samples += [
            {"prompt": p.messages[-1]["content"], "completion": t, "reward": r, "prompt_index": p.index}
            for p, t, r in zip(chunk, texts, total)
        ]
    means = [sum(r) / len(r) for r in per_prompt.values()]
    moments = torch.tensor([len(means), sum(means), sum(m * m for m in means)], dtype=torch.float64)
    D.all_reduce_sum(tot)
    D.all_reduce_sum(moments)
    n = max(tot[1].item(), 1.0)
    res = {"val_reward": tot[0].item() / n, "val_completions/mean_length": tot[2].item() / n}
    k, s1, s2 = moments.tolist()
    if k > 1:  # standard error over prompts (a prompt's answers are not independent of each other)
        res["val_reward_se"] = (max(s2 - s1 * s1 / k, 0.0) / (k - 1) / k) ** 0.5
    if len(names) > 1:
        res.update({f"val_rewards/{k}": v / n for k, v in zip(names, tot[3:].tolist())})
    return res, samples


def _load_policy(from_ckpt: str | Path, algo: str):
    model, mc, tok, lineage = load_start(from_ckpt)
    if ALGOS[algo].value_head:
        vm = ValueHeadLM(mc)
        missing, unexpected = vm.load_state_dict(model.state_dict(), strict=False)
        assert missing == ["value_head.weight"] and not unexpected, (missing, unexpected)
        model = vm
    return model, mc, tok, lineage


def _scorer(cfg: RLConfig, tok: Any, device: Any):
    if "rm" not in cfg.reward:
        return None, None
    if not cfg.reward_model:
        raise UsageError("reward rm needs --reward-model RUN (a `llmctl reward` run or checkpoint)")
    ck = resolve_checkpoint(cfg.reward_model)
    scorer = load_reward_model(ck, device=str(device))
    if scorer.tok.fingerprint != tok.fingerprint:
        raise UsageError(
            f"reward model {cfg.reward_model} has another tokenizer than the policy "
            f"({scorer.tok.fingerprint[:12]} vs {tok.fingerprint[:12]}): train it from the same SFT run"
        )
    return scorer, {"path": str(ck.resolve()), "stage": "reward", "fingerprint": fingerprint_file(weights_file(ck))}


@training_stage("run_dir")
def run_rl(
    prompts: str | Path,
    from_ckpt: str | Path,
    run_dir: str | Path,
    cfg: RLConfig,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """RL fine-tuning of a (usually SFT) checkpoint on prompts; returns the loop summary."""
    d = D.init(cfg.train.device)
    if cfg.train.fsdp:
        raise UsageError("rl runs under DDP (torchrun) but not FSDP yet: drop --fsdp")
    accum = cfg.check_sizes(d.world)
    val_tools = make_toolbox(cfg)  # an unknown tool fails here, before anything loads
    model, mc, tok, ck_lineage = _load_policy(from_ckpt, cfg.algo)
    if val_tools is not None:
        call_format(tok)  # a model whose chat template has no tool-call format fails here
    lora = use_lora(model, cfg.train, ck_lineage, "rl", heads=("value_head",) if ALGOS[cfg.algo].value_head else ())
    scorer, rm_lineage = _scorer(cfg, tok, d.device)
    rewards = Rewards(cfg.reward, cfg.reward_weights, scorer)
    tr, val, data_lineage, counts = load_prompts(prompts, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    if len(tr) < cfg.rollout_prompts:
        raise UsageError(f"{prompts}: {len(tr)} training prompts, fewer than one rollout ({cfg.rollout_prompts})")
    val = val[: cfg.val_limit]
    ref = None
    if ALGOS[cfg.algo].needs_ref or cfg.beta != 0.0:
        if lora:  # the policy with its adapters off is the starting checkpoint: no second copy
            ref = BaseReference(model.to(d.device))
        else:
            ref = load_start(from_ckpt)[0].to(d.device).eval().requires_grad_(False)
    algo = ALGOS[cfg.algo](cfg, ref)
    model.to(d.device)
    torch.manual_seed(cfg.train.seed)
    batches = RolloutBatches(model, tr, tok, cfg, algo, rewards, accum)
    if val:
        start_reward, _ = held_out_reward(model, val, tok, rewards, cfg, tools=val_tools)
        counts["val_reward_start"] = round(start_reward["val_reward"], 6)
        counts["val_reward_start_se"] = round(start_reward.get("val_reward_se", 0.0), 6)
    run_path = Path(run_dir)

    def evaluate(_fwd: torch.nn.Module) -> dict[str, float]:
        res, samples = held_out_reward(model, val, tok, rewards, cfg, tools=val_tools)
        if d.master:
            step = batches.served // accum
            write_samples(run_path, step, "rollout", batches.samples)
            write_samples(run_path, step, "held_out", samples[: cfg.log_samples])
        return res

    D.print0(
        f"rl: {cfg.algo}, {counts['train']:,} train / {len(val):,} held-out prompts; rollouts of "
        f"{cfg.rollout_prompts} prompts x {cfg.group}, {cfg.epochs} epoch(s), "
        f"{cfg.epochs * cfg.rollout_prompts * cfg.group // cfg.train.batch_size} step(s) per rollout; "
        f"rewards {', '.join(cfg.reward)}; beta {cfg.beta}"
        + ("" if ref is not None else " (no reference kept)")
        + (
            f"; held-out reward at start {counts['val_reward_start']:.4f} ± {counts['val_reward_start_se']:.4f} (SE)"
            if val
            else ""
        )
    )
    inputs = [data_lineage, ck_lineage] + ([rm_lineage] if rm_lineage else [])
    summary = run_training(
        "rl",
        model,
        mc,
        tok,
        cfg,
        run_dir,
        inputs,
        algo.loss,
        batches,
        evaluate if val else None,
        counts,
        resume,
        overwrite,
        extra={"algo": cfg.algo, **lora},
        seq_len=cfg.max_prompt_len + cfg.max_new_tokens,
    )
    return {**summary, "data": counts}
