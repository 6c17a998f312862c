"""The training loop every trainer shares: pretrain, and SFT / reward / DPO on top of it.

A trainer supplies three things and gets optimizer, schedule, accumulation, clipping, mixed
precision, DDP/FSDP, logging, validation, checkpoints and exact resume for free:

    loss_fn(model, batch) -> (loss, {"name": float or tensor, ...})   # loss: mean over the micro-batch
    batches: iterator of this rank's micro-batches (dicts of tensors) with state_dict()/load_state_dict()
    evaluate(model) -> {"val_loss": ..., ...}                          # optional, every eval_every steps

Gradient accumulation: each optimizer step consumes `batch_size` sequences over all ranks, in
`batch_size / (micro_batch * world)` micro-steps per rank; micro-batch losses are averaged, so
1 rank x 4 micro-steps and 2 ranks x 2 give the same update up to float summation order (~1e-7).

A resume restores weights (safetensors), optimizer moments and schedule step, the torch RNG and
the data position, so on CPU the losses after a resume equal the uninterrupted run's exactly. A
checkpoint also saves the run's summary so far (loss, val_loss, step, tokens, elapsed time): the
counters in metrics.jsonl continue from it, and a run killed after its last checkpoint ends with
the same manifest as one that was not. Nothing is written to the run directory before the first
step is done (`begin`, see llmctl.train.run_dir).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file

from llmctl.config import runtime
from llmctl.errors import Interrupted, UsageError
from llmctl.model.checkpoint import WEIGHTS, load_train_state, lora_of, save_checkpoint, verified
from llmctl.model.lora import ADAPTER_WEIGHTS, LoraConfig, read_adapter
from llmctl.model.moe import add_imbalance, discard_records, router_losses
from llmctl.model.transformer import ModelConfig
from llmctl.plan.layout import check_batch
from llmctl.store.dataset import atomic_write_text
from llmctl.train import distributed as D
from llmctl.train import parallel as P
from llmctl.train.optim import OPTIMIZERS, Composite, set_schedule
from llmctl.train.optim import build_optimizer as _build_optimizer
from llmctl.train.tracking import Trackers, parse_trackers

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
# Dense bf16 peak FLOP/s per GPU, for MFU when --peak-tflops is not given.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


class TrainingDiverged(UsageError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, over all ranks
    micro_batch: int = 8  # sequences per forward/backward on one rank
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_fraction: float = 0.2  # wsd: the last 20% of steps decay linearly
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # adamw | muon (llmctl.train.optim.OPTIMIZERS)
    muon_lr: float = 0.02  # muon: the hidden matrices' peak learning rate (the schedule scales it as lr)
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup: int = 300  # steps from muon_momentum_start to muon_momentum
    embed_lr: float | None = None  # the input embedding's own peak learning rate (AdamW); None = lr
    head_lr: float | None = None  # an untied output head's own peak learning rate (AdamW); None = lr
    seed: int = 1337
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    eval_every: int = 100
    ckpt_every: int = 500
    keep_checkpoints: int = runtime(2)
    log_every: int = runtime(10)
    compile: bool = runtime(False)
    activation_checkpointing: bool = runtime(False)
    fsdp: bool = runtime(False)
    tp: int = runtime(1)  # tensor-parallel degree under torchrun (llmctl.train.parallel); dp = world / tp
    device: str = runtime("auto")
    peak_tflops: float | None = runtime(None)  # per device, for MFU
    stop_after: int | None = runtime(None)  # stop after this many steps in this invocation (preemptible jobs)
    log_to: str = runtime("")  # also log to these trackers: tensorboard, wandb (comma-separated)
    lora: LoraConfig = field(default_factory=LoraConfig)  # fine-tuning stages: r > 0 trains adapters only

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise UsageError(f"unknown schedule {self.schedule!r}; choose cosine, wsd or constant")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise UsageError(f"unknown dtype {self.dtype!r}; choose auto, fp32 or bf16")
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch < 1:
            raise UsageError("steps, batch_size and micro_batch must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        parse_trackers(self.log_to)
        if not self.lr > 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise UsageError(
                f"lr must be positive, warmup_steps, weight_decay and grad_clip at least 0 (got lr {self.lr}, "
                f"warmup_steps {self.warmup_steps}, weight_decay {self.weight_decay}, grad_clip {self.grad_clip})"
            )
        for name in ("embed_lr", "head_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive (got {getattr(self, name)}); leave it unset to use lr")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UsageError(f"beta1 and beta2 must be in [0, 1) (got {self.beta1}, {self.beta2})")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise UsageError(f"unknown device {self.device!r}; choose auto, cpu, cuda or mps")

    def grad_accum(self, world: int) -> int:
        return check_batch(self.batch_size, self.micro_batch, world)


class Batches(Protocol):
    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, Any]]]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine (or WSD's flat-then-linear) decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
        if step < decay_start:
            return cfg.lr
        return cfg.lr + (lo - cfg.lr) * (step - decay_start + 1) / max(1, cfg.steps - decay_start)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> Composite:
    """The optimizer `cfg.optimizer` names over the model's trainable parameters (llmctl.train.optim)."""
    return _build_optimizer(list(D.unwrap(model).named_parameters()), cfg)


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
    return None


def checkpoints(run_dir: Path) -> list[Path]:
    d = run_dir / CHECKPOINTS
    return sorted(p for p in d.glob("step_*") if p.is_dir()) if d.is_dir() else []


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _scalar(v: Any) -> float:
    return float(v.detach().float().item()) if torch.is_tensor(v) else float(v)


# What the loop itself logs each step; a loss function's own metrics (TRL's names for DPO:
# rewards/chosen, ...; accuracy and margin for the reward model) sit beside them, unprefixed.
CORE_KEYS = frozenset({"step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed_s", "mfu"})


# The step line shows a loss function's metrics by these short names; every metric (TRL's six
# rewards/* and logps/* for DPO, response_tokens for SFT, ...) is in metrics.jsonl.
LINE_METRICS = {
    "rewards/accuracies": "acc",
    "rewards/margins": "margin",
    "accuracy": "acc",
    "margin": "margin",
    "moe_lb_loss": "lb",
    "moe_z_loss": "z",
    "moe_imbalance": "imbalance",
}


def _log_line(rec: dict[str, Any], steps: int) -> str:
    """One compact line per logged step; at an eval step a second line with the held-out metrics."""
    head = f"step {rec['step']:>5}/{steps}"
    parts = [
        head,
        f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"gnorm {rec['grad_norm']:.3f}",
        f"{rec['tokens_per_s']:,.0f} tok/s",
    ]
    if rec.get("mfu") is not None:
        parts.append(f"mfu {100 * rec['mfu']:.1f}%")
    parts += [f"{short} {rec[k]:.4f}" for k, short in LINE_METRICS.items() if isinstance(rec.get(k), (int, float))]
    val = [f"val_loss {rec['val_loss']:.4f}"] if "val_loss" in rec else []
    val += [
        f"val_{short} {rec['val_' + k]:.4f}"
        for k, short in LINE_METRICS.items()
        if isinstance(rec.get("val_" + k), (int, float))
    ]
    return " | ".join(parts) + ("\n" + " | ".join([head, *val]) if val else "")


def train(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    loss_fn: LossFn,
    batches: Batches,
    cfg: TrainConfig,
    run_dir: str | Path,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    tokenizer_dir: str | Path | None = None,
    manifest: dict[str, Any] | None = None,
    resume: bool = False,
    flops_per_token: float | None = None,
    begin: Callable[[], None] | None = None,
    loss_parallel: bool = False,
) -> dict[str, Any]:
    """Train `model` in place; returns a summary (final loss, val metrics, tokens, seconds, checkpoint).

    `resume`: continue from the run dir's latest checkpoint when it has one. `begin` is called on
    rank 0 before the first write to the run dir, once the first step is done (default: create it).
    `loss_parallel`: under tensor parallelism the logits stay vocabulary-sharded DTensors and
    `loss_fn` and `evaluate` run under torch's loss_parallel() (their cross-entropy must be the only
    use of the logits, as in pretrain)."""
    d = D.info()
    run_dir = Path(run_dir)
    accum = cfg.grad_accum(d.dp)
    if cfg.warmup_steps >= cfg.steps:
        D.print0(
            f"warning: warmup ({cfg.warmup_steps} steps) is not shorter than the run ({cfg.steps} steps): "
            f"the learning rate never reaches --lr {cfg.lr:g} (peak {lr_at(cfg.steps - 1, cfg):.3g}); lower --warmup"
        )
    model.to(d.device)
    D.unwrap(model).activation_checkpointing = cfg.activation_checkpointing
    wrapped = D.wrap(model, cfg.fsdp, loss_parallel)
    vocab_sharded = lambda: P.loss_context(loss_parallel and d.tp > 1)  # noqa: E731
    optim = build_optimizer(wrapped, cfg)
    trackers = Trackers(cfg.log_to, run_dir, (manifest or {}).get("config") or {}, (manifest or {}).get("inputs") or {})
    fwd = torch.compile(wrapped) if cfg.compile else wrapped
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and d.device.type == "cuda")
    autocast = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    peak = peak_flops(cfg, d.device)

    start, restored = 0, {}
    found = checkpoints(run_dir) if resume else []
    if found:
        st = load_train_state(found[-1])
        if lora_of(found[-1]):  # a LoRA run's checkpoint holds the adapters; the base is the model's own
            verified(found[-1], ADAPTER_WEIGHTS)  # (loaded alone: every rank holds the same keys under FSDP2)
            weights = read_adapter(found[-1])
        else:
            weights = load_file(str(verified(found[-1], WEIGHTS)))
            if model_cfg.tie_embeddings:
                weights["lm_head.weight"] = weights["embed_tokens.weight"]
        D.load_full_state(wrapped, optim, weights, st["optimizer"])
        batches.load_state_dict(st["data"])
        torch.set_rng_state(st["rng"])
        start = int(st["step"])
        restored = dict(st.get("summary") or {})
        D.print0(f"resumed from {found[-1]} at step {start}")
    metrics_path = run_dir / METRICS
    began = False

    def ensure_begun() -> None:
        """The first write: the run dir is created (or an old run replaced), metrics.jsonl cut to the resumed step."""
        nonlocal began
        if began:
            return
        began = True
        if not d.master:
            return
        (begin or (lambda: run_dir.mkdir(parents=True, exist_ok=True)))()
        kept = []
        if start and metrics_path.is_file():
            kept = [ln for ln in metrics_path.read_text().splitlines() if ln.strip() and _step_of(ln) <= start]
        atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))

    def write_metrics(rec: dict[str, Any]) -> None:
        ensure_begun()
        if d.master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            trackers.log(rec)

    def save(step: int) -> Path:
        ensure_begun()
        weights = D.full_state_dict(wrapped)
        optim_sd = D.full_optim_state(wrapped, optim)
        path = run_dir / CHECKPOINTS / f"step_{step:07d}"
        if d.master:
            state = {
                "step": step,
                "optimizer": optim_sd,
                "data": batches.state_dict(),
                "rng": torch.get_rng_state(),
                "summary": _plain(summary),
            }
            save_checkpoint(
                path,
                weights,
                model_cfg,
                tokenizer_dir,
                train_state=state,
                manifest={**(manifest or {}), "step": step, "layout": layout},
            )
            for old in checkpoints(run_dir)[: -max(1, cfg.keep_checkpoints)]:
                trash = old.with_name(f".{old.name}.del-{os.getpid()}")  # out of sight first: a kill
                os.replace(old, trash)  # mid-delete leaves no half-deleted step_N (run_dir cleans .del)
                shutil.rmtree(trash, ignore_errors=True)
        D.barrier()
        return path

    def run_eval(step: int) -> dict[str, float]:
        if evaluate is None:
            return {}
        wrapped.eval()
        with torch.no_grad(), autocast(), vocab_sharded():
            out = {k: float(D.plain(v)) for k, v in evaluate(fwd).items()}
        wrapped.train()
        write_metrics({"step": step, **out})
        return out

    last_ckpt = found[-1] if found else None
    layout = {**d.layout(), "fsdp": bool(cfg.fsdp or (d.tp > 1 and d.dp > 1))}
    summary: dict[str, Any] = {**restored, "start_step": start, **{f"layout_{k}": v for k, v in layout.items()}}
    wrapped.train()
    tokens_start = int(restored.get("tokens", 0))  # metrics continue from the checkpoint's counters
    elapsed_start = float(restored.get("elapsed_s", 0.0))
    t_start, tokens_seen, t_last = time.time(), tokens_start, time.time()
    stop_at = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    # a live bar on a terminal (rank 0); log lines every log_every steps everywhere
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not (d.master and sys.stdout.isatty()),
    )
    bar = progress.add_task("", total=cfg.steps, completed=start)
    try:
        with progress:
            for step in range(start, stop_at):
                lr = lr_at(step, cfg)
                set_schedule(optim, step, lr, cfg)
                loss_sum = torch.zeros((), device=d.device)
                extra: dict[str, float] = {}
                step_tokens = 0
                for k in range(accum):
                    batch = _to(next(batches), d.device)
                    step_tokens += int(batch["input_ids"].numel()) if "input_ids" in batch else 0
                    with D.grad_sync(wrapped, k == accum - 1), autocast(), vocab_sharded():
                        discard_records(wrapped)
                        loss, m = loss_fn(fwd, batch)
                        aux, moe_metrics = router_losses(wrapped)  # an MoE's router losses; (None, {}) if dense
                        m = {**m, **moe_metrics}
                        ((loss if aux is None else loss + aux) / accum).backward()
                    loss_sum += D.plain(loss.detach()).float()
                    for name, v in m.items():
                        extra[name] = extra.get(name, 0.0) + _scalar(D.plain(v)) / accum
                if d.tp > 1:  # parameters on the 2-D mesh and plain ones (a reward head) together
                    grad_norm = P.clip_grad_norm(wrapped.parameters(), cfg.grad_clip)
                else:
                    grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
                if hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                red = torch.tensor([loss_sum.item() / accum, step_tokens, *extra.values()], dtype=torch.float64)
                D.all_reduce_sum(red)
                loss_val, step_tokens = red[0].item() / d.dp, int(red[1].item())
                extra = add_imbalance({k: v / d.dp for k, v in zip(extra, red[2:].tolist())})
                clash = set(extra) & CORE_KEYS
                assert not clash, f"a loss function's metric shadows a loop metric: {clash}"
                gn = float(grad_norm)
                if not (math.isfinite(loss_val) and math.isfinite(gn)):
                    where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was saved yet"
                    raise TrainingDiverged(
                        f"loss {loss_val} / grad norm {gn} at step {step + 1}: training stopped ({where}); "
                        "lower --lr, raise --warmup or --grad-clip (a new config: use --overwrite or another run dir)"
                    )
                optim.step()
                optim.zero_grad(set_to_none=True)
                done = step + 1
                now = time.time()
                tokens_seen += step_tokens
                tps = step_tokens / max(now - t_last, 1e-9)  # the whole mesh: each token counted once
                rec = {
                    "step": done,
                    "loss": loss_val,
                    "lr": lr,
                    "grad_norm": gn,
                    "tokens_per_s": tps,
                    "tokens": tokens_seen,
                    "elapsed_s": round(elapsed_start + now - t_start, 3),
                    **extra,
                }
                if peak and flops_per_token:
                    rec["mfu"] = flops_per_token * tps / (peak * d.world)  # over every device of the mesh
                write_metrics(rec)
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                    rec.update({f"val_{k.removeprefix('val_')}": v for k, v in run_eval(done).items()})
                if done % cfg.log_every == 0 or done in (start + 1, stop_at):
                    D.print0(_log_line(rec, cfg.steps))
                summary.update(rec)
                if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == stop_at:
                    last_ckpt = save(done)
                progress.update(bar, completed=done, description=f"loss {loss_val:.4f} | {tps:,.0f} tok/s")
                t_last = time.time()  # tokens/s counts training only, not validation or checkpoint time
    except KeyboardInterrupt:
        raise Interrupted(_interrupt_message(run_dir, began, start, cfg)) from None
    finally:
        trackers.close()
    seconds = time.time() - t_start
    summary.update(
        {
            "start_step": start,
            "steps_done": stop_at,
            "finished": stop_at == cfg.steps,
            "seconds": round(seconds, 3),
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "tokens_per_s_avg": (tokens_seen - tokens_start) / max(seconds, 1e-9),
        }
    )
    return summary


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return math.inf  # a line cut by a kill: dropped with the steps after the checkpoint


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's plain values, as a checkpoint stores them (torch.load(weights_only=True) reads them)."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _interrupt_message(run_dir: Path, began: bool, start: int, cfg: TrainConfig) -> str:
    """What Ctrl-C left behind, as it is on disk."""
    if not began:
        if start:
            return f"interrupted before a step was done; {run_dir} is as it was: re-run the same command to resume from step {start}"
        return f"interrupted before a step was done; nothing was written to {run_dir}"
    found = checkpoints(run_dir)
    if found:
        return (
            f"interrupted; the last checkpoint is {found[-1]}: re-run the same command to resume from it "
            "(later steps are trained again)"
        )
    return (
        f"interrupted before the first checkpoint (every {cfg.ckpt_every} steps); re-running the same command "
        "starts the run again"
    )
