"""`llmctl pretrain`: next-token cross-entropy on packed windows of a token dataset.

Each epoch shuffles the documents (seeded by seed and epoch), concatenates them (each ends with
EOS) and cuts windows of seq_len + 1 tokens at stride seq_len: no token dropped, none padded.
With `doc_mask` a window computes what its documents would alone. Micro-batch g (over all ranks)
holds windows g*B .. g*B+B-1 and rank r takes position + r, position + world + r, ...: the data
position is one integer, so a resume continues with the next batch on 1 or N ranks alike.
The training split is held in RAM as int32 token ids (4 bytes a token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmctl.config import runtime, to_dict
from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, read_model_config, resolve_checkpoint
from llmctl.model.hf_import import hf_model_config, is_hf_dir
from llmctl.model.moe import inactive_params
from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy, preset_config
from llmctl.store.dataset import fingerprint_file
from llmctl.tokenizer.load import load_tokenizer
from llmctl.train import distributed as D
from llmctl.train.base import load_token_split, open_tokens
from llmctl.train.loop import TrainConfig, train
from llmctl.train.mix_batches import StreamedMix
from llmctl.train.parallel import check_divisible
from llmctl.train.run_dir import training_run, training_stage


@dataclass
class ModelSpec:
    """A preset plus optional overrides (None = the preset's value)."""

    preset: str = "tiny"
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    d_model: int | None = None
    d_ff: int | None = None
    rope_base: float | None = None
    rope_scale: float | None = None
    tie_embeddings: bool | None = None
    # Mixture-of-Experts (llmctl.model.moe, docs/moe.md): a MoE preset, or these
    n_experts: int | None = None
    moe_top_k: int | None = None
    n_shared_experts: int | None = None
    moe_d_ff: int | None = None
    moe_every: int | None = None
    moe_norm_topk: bool | None = None
    moe_lb_coef: float | None = None
    moe_z_coef: float | None = None
    moe_capacity_factor: float | None = None
    moe_jitter: float | None = None
    moe_impl: str | None = runtime(None)
    # the modern small-model recipe's switches (llmctl.model.transformer; RECIPES turns them on together)
    qk_norm: bool | None = None
    mlp_act: str | None = None
    zero_init_proj: bool | None = None
    logit_softcap: float | None = None


# `--recipe NAME`: config keys set below anything the user gives (--config, --set or a flag).
# `modern` is the combination measured best on TinyStories (docs/pretrain.md): Muon, untied embeddings
# with their own learning rates, QK-norm, ReLU^2, zero-init projections and the logit soft-cap (which
# `llmctl export` refuses: `--logit-softcap 0 --no-qk-norm` keeps a model exportable, at a measured cost).
RECIPES: dict[str, dict[str, Any]] = {
    "modern": {
        "train.optimizer": "muon",
        "model.qk_norm": True,
        "model.mlp_act": "relu2",
        "model.zero_init_proj": True,
        "model.logit_softcap": 15.0,
        "model.tie_embeddings": False,
        "train.embed_lr": 0.05,
        "train.head_lr": 0.004,
    },
}


def recipe_flags(name: str | None) -> dict[str, Any]:
    """The config keys recipe `name` sets ({} for None); one line for an unknown name."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])


@dataclass
class PretrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    seq_len: int = 256
    batch_tokens: int = 8192  # tokens per optimizer step over all ranks; sets train.batch_size
    doc_mask: bool = True
    val_tokens: int = 65536  # validation tokens (the first windows of the val split)
    init_from: str | None = None  # a checkpoint or Hugging Face model dir to continue from; None = a new model

    def __post_init__(self) -> None:
        if self.train.lora.r:
            raise UsageError("pretrain trains the whole model: LoRA (train.lora.r) is for sft, dpo and rl")
        if self.seq_len > 0 and self.batch_tokens % self.seq_len == 0:  # else pretrain() says what is wrong
            self.train.batch_size = self.batch_tokens // self.seq_len


def model_config(cfg: PretrainConfig, vocab_size: int) -> ModelConfig:
    spec = {k: v for k, v in to_dict(cfg.model).items() if k != "preset"}
    mc = preset_config(cfg.model.preset, vocab_size, **spec)
    mc.max_seq_len = max(mc.max_seq_len, cfg.seq_len)
    return mc


def start_config(cfg: PretrainConfig, vocab_size: int) -> ModelConfig:
    """The model's config: the preset's, or that of `init_from` (which must hold the tokenizer and the window)."""
    if not cfg.init_from:
        return model_config(cfg, vocab_size)
    src = cfg.init_from
    mc = hf_model_config(src) if is_hf_dir(src) else read_model_config(resolve_checkpoint(src))
    if vocab_size > mc.vocab_size:
        raise UsageError(f"--from {src}: its {mc.vocab_size} embeddings do not hold the tokenizer's {vocab_size} ids")
    if cfg.seq_len > mc.max_seq_len:
        raise UsageError(f"--from {src}: seq_len {cfg.seq_len} exceeds the model's max_seq_len {mc.max_seq_len}")
    return mc


# ----------------------------------------------------------------------------- data


class PackedBatches:
    """This rank's micro-batches of packed windows: {input_ids, targets, doc_ids} (B, T) int64."""

    def __init__(
        self,
        flat: np.ndarray,
        offsets: np.ndarray,
        seq_len: int,
        micro_batch: int,
        seed: int,
        eos_id: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        doc_mask: bool = True,
    ):
        self.flat, self.offsets = flat, offsets
        self.T, self.B, self.seed, self.eos = seq_len, micro_batch, seed, eos_id
        self.rank, self.world, self.shuffle, self.doc_mask = rank, world, shuffle, doc_mask
        self.windows_per_epoch = (len(flat) - 1) // seq_len
        if self.windows_per_epoch < 1:
            raise UsageError(f"only {len(flat)} tokens: fewer than one window of seq_len {seq_len} + 1")
        self.position = 0
        self._epoch, self._stream = -1, flat

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed, "seq_len": self.T, "micro_batch": self.B}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["seq_len"], state["micro_batch"]) != (self.T, self.B):
            raise UsageError("resume needs the same seq_len and micro_batch as the saved run")
        self.position = int(state["position"])

    def _epoch_stream(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            n = len(self.offsets) - 1
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
                self._stream = np.concatenate([self.flat[self.offsets[i] : self.offsets[i + 1]] for i in order])
            self._epoch = epoch
        return self._stream

    def window(self, w: int) -> np.ndarray:
        epoch, i = divmod(w, self.windows_per_epoch)
        return self._epoch_stream(epoch)[i * self.T : i * self.T + self.T + 1]

    def micro_batch(self, g: int) -> dict[str, torch.Tensor]:
        win = torch.from_numpy(np.stack([self.window(g * self.B + j) for j in range(self.B)]).astype(np.int64))
        x = win[:, :-1]
        out = {"input_ids": x, "targets": win[:, 1:].contiguous()}
        if self.doc_mask:
            is_eos = (x == self.eos).long()
            out["doc_ids"] = is_eos.cumsum(1) - is_eos  # a document ends with (and includes) its EOS
        return out

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.micro_batch(self.position + self.rank)
        self.position += self.world
        return batch


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits = model(batch["input_ids"], doc_ids=batch.get("doc_ids"))
    return cross_entropy(logits, batch["targets"]), {}


def make_evaluate(flat: np.ndarray, offsets: np.ndarray, cfg: PretrainConfig, eos_id: int):
    """Validation loss over the first val_tokens of the val split (fixed windows, split over ranks)."""
    val = PackedBatches(flat, offsets, cfg.seq_len, 1, cfg.train.seed, eos_id, shuffle=False, doc_mask=cfg.doc_mask)
    n = max(1, min(val.windows_per_epoch, cfg.val_tokens // cfg.seq_len))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        d = D.info()
        # every rank must run the same number of forwards (FSDP all-gathers inside each one)
        # (over data-parallel ranks: the ranks of a tensor-parallel group share their windows)
        total = max(d.dp, n - n % d.dp)
        mine = list(range(d.dp_rank, total, d.dp))
        tot = torch.zeros(2, dtype=torch.float64)
        for s in range(0, len(mine), cfg.train.micro_batch):
            parts = [val.micro_batch(w) for w in mine[s : s + cfg.train.micro_batch]]
            b = {k: torch.cat([p[k] for p in parts]).to(d.device) for k in parts[0]}
            logits = model(b["input_ids"], doc_ids=b.get("doc_ids"))
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), b["targets"].flatten(), reduction="sum"
            )
            tot += torch.tensor([D.plain(loss).item(), b["targets"].numel()], dtype=torch.float64)
        D.all_reduce_sum(tot)
        return {"val_loss": (tot[0] / tot[1]).item()}

    return evaluate


# ----------------------------------------------------------------------------- the stage


def _mix_source(mix: str | Path, tok: Any) -> Any:
    m = StreamedMix(mix)
    if m.tokenizer.get("fingerprint") != tok.fingerprint:
        raise UsageError(
            f"--mix {mix}: its sources were tokenized with {m.tokenizer.get('path')}, not this --tokenizer"
        )
    return m


def set_batch_size(cfg: PretrainConfig) -> PretrainConfig:
    """train.batch_size (sequences a step) from batch_tokens / seq_len, as the run records it."""
    if cfg.batch_tokens % cfg.seq_len:
        raise UsageError(f"batch_tokens {cfg.batch_tokens} is not a multiple of seq_len {cfg.seq_len}")
    cfg.train.batch_size = cfg.batch_tokens // cfg.seq_len
    return cfg


@training_stage("run_dir")
def pretrain(
    tokens: str | Path | None,
    tokenizer_dir: str | Path,
    run_dir: str | Path,
    cfg: PretrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    mix: str | Path | None = None,
) -> dict[str, Any]:
    """Train a model from scratch on a token dataset; returns the run summary (also in _manifest.json).

    Re-running the same call continues the run from its latest checkpoint (`resume` is accepted
    for the CLI's --resume and changes nothing); on a finished run it returns that run's summary.
    `mix`: a mix file instead of `tokens`, streamed from its sources (llmctl.train.mix_batches)."""
    d = D.init(cfg.train.device, cfg.train.tp)
    run_dir = Path(run_dir)
    tok = load_tokenizer(tokenizer_dir)
    if (tokens is None) == (mix is None):
        raise UsageError("give a token dataset or --mix FILE (one of the two)")
    check_divisible(start_config(cfg, tok.vocab_size), d.tp)  # before any rank builds the model
    source = _mix_source(mix, tok) if mix is not None else open_tokens(tokens, tok)
    set_batch_size(cfg)
    accum = cfg.train.grad_accum(d.dp)
    inputs = [*(source.lineage() if mix is not None else [source.lineage()]), tok.lineage()]
    if cfg.init_from:
        src = Path(cfg.init_from) if is_hf_dir(cfg.init_from) else resolve_checkpoint(cfg.init_from)
        weights = sorted(src.glob("*.safetensors"))
        inputs.append({"path": str(src.resolve()), "stage": "init", "fingerprint": fingerprint_file(weights[0])})
    with training_run("pretrain", run_dir, cfg, inputs, overwrite) as run:
        if run.complete:
            return run.summary
        split = source.split if mix is not None else (lambda name: load_token_split(source, name))
        flat, offsets = split("train")
        if len(flat) and int(flat.max()) >= tok.vocab_size:
            raise UsageError(
                f"{tokens or mix}: token id {int(flat.max())} is outside the tokenizer's {tok.vocab_size} tokens "
                "(tokenized with another tokenizer?)"
            )
        batches = PackedBatches(
            flat,
            offsets,
            cfg.seq_len,
            cfg.train.micro_batch,
            cfg.train.seed,
            tok.eos_id,
            d.dp_rank,
            d.dp,
            doc_mask=cfg.doc_mask,
        )
        vflat, voffsets = split("val")
        evaluate = make_evaluate(vflat, voffsets, cfg, tok.eos_id) if len(vflat) > cfg.seq_len else None
        if evaluate is None:
            D.print0("warning: no validation split (or shorter than one window): no validation loss")

        if cfg.init_from:
            model, mc, _, _ = load_checkpoint(cfg.init_from)  # fp32 on CPU, as a new model is built
            model.train()
        else:
            mc = model_config(cfg, tok.vocab_size)
            torch.manual_seed(cfg.train.seed)
            model = Transformer(mc)  # built on CPU in fp32 so the init does not depend on the device
        fpt = model.flops_per_token(cfg.seq_len)
        D.print0(
            f"model: {model.num_params():,} parameters ({model.num_params(True):,} non-embedding), "
            f"{fpt / 1e6:.2f} MFLOPs/token; {mc.n_layer} layers, d_model {mc.d_model}, {mc.n_head} heads "
            f"({mc.n_kv_head} kv), vocab {mc.vocab_size}"
        )
        if mc.n_experts:
            D.print0(
                f"moe: {mc.n_experts} experts top-{mc.moe_top_k} of width {mc.moe_d_ff}, {mc.n_shared_experts} shared, "
                f"every {mc.moe_every} layer(s); {model.num_params() - inactive_params(mc):,} active parameters; "
                f"aux: lb {mc.moe_lb_coef:g}, z {mc.moe_z_coef:g}; "
                + (f"capacity factor {mc.moe_capacity_factor:g}" if mc.moe_capacity_factor else "dropless")
            )
        D.print0(
            f"data: {len(flat):,} train tokens in {len(offsets) - 1:,} docs, {len(vflat):,} val tokens; "
            f"{cfg.batch_tokens:,} tokens/step = {d.dp} rank(s){f' of tp {d.tp}' if d.tp > 1 else ''} x {cfg.train.micro_batch} x {cfg.seq_len} "
            f"x {accum} accumulation; {cfg.train.steps} steps = {cfg.train.steps * cfg.batch_tokens:,} tokens "
            f"({cfg.train.steps * cfg.batch_tokens / max(1, len(flat)):.2f} epochs)"
        )
        manifest = {"stage": "pretrain", "config": to_dict(cfg), "inputs": inputs}
        summary = train(
            model,
            mc,
            lm_loss,
            batches,
            cfg.train,
            run_dir,
            evaluate=evaluate,
            tokenizer_dir=tok.path,
            manifest=manifest,
            resume=run.resume,
            flops_per_token=fpt,
            begin=run.begin,
            loss_parallel=True,
        )
        summary["params"] = model.num_params()
        return run.finish(summary, manifest, mc.to_dict())
