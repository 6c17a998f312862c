"""Commands: llmctl pretrain, generate, export, plot. Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl import config as C  # called as C.load: `--help` swaps it to read the stage defaults
from llmctl.cli.app import ConfigOpt, OverwriteOpt, PrintConfigOpt, SetOpt, app
from llmctl.cli.common import (
    EmbedLrOpt,
    HeadLrOpt,
    LogToOpt,
    MlpActOpt,
    OptimizerOpt,
    QkNormOpt,
    RecipeOpt,
    ResumeOpt,
    SoftcapOpt,
    TieOpt,
    TpOpt,
    ZeroInitOpt,
    print_config,
    run_state,
)


@app.command("pretrain")
def pretrain_cmd(
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Tokenizer directory the tokens were made with.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Run directory: metrics.jsonl, checkpoints/, _manifest.json.")
    ],
    tokens: Annotated[
        Optional[str],
        typer.Argument(help="Token dataset (from `llmctl tokenize encode` or `llmctl mix`); omit with --mix."),
    ] = None,
    mix: Annotated[
        Optional[str],
        typer.Option(
            "--mix",
            help="A mix file (as `llmctl mix --config` reads): train on that mixture streamed from its sources, no copy.",
        ),
    ] = None,
    preset: Annotated[
        Optional[str],
        typer.Option(
            help="Model shape: tiny | 10m | 124m | 350m | moe-tiny | moe-10m | olmoe (Mixture-of-Experts, docs/moe.md; or --set model.n_experts=8 etc.) (default tiny)."
        ),
    ] = None,
    from_: Annotated[
        Optional[str],
        typer.Option(
            "--from",
            help="Continue pretraining a checkpoint or a Hugging Face model directory (its shape; -t its tokenizer).",
        ),
    ] = None,
    n_layer: Annotated[Optional[int], typer.Option(help="Override the preset's layer count.")] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Override the preset's attention heads.")] = None,
    n_kv_head: Annotated[
        Optional[int], typer.Option(help="Key/value heads (< n_head: grouped-query attention).")
    ] = None,
    d_model: Annotated[Optional[int], typer.Option(help="Override the preset's model width.")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Tokens per training window (default 256).")] = None,
    batch_tokens: Annotated[
        Optional[int], typer.Option(help="Tokens per optimizer step over all ranks (default 8192).")
    ] = None,
    micro_batch: Annotated[
        Optional[int], typer.Option(help="Sequences per forward/backward per rank (default 8).")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default 1000).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default 3e-4).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Linear warmup steps (default 100).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="cosine | wsd | constant (default cosine).")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Gradient norm clip (default 1.0).")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Validation loss every N steps (default 100).")] = None,
    ckpt_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps (default 500).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the init and of the data order.")] = None,
    dtype: Annotated[
        Optional[str], typer.Option(help="auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16.")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda.")] = None,
    peak_tflops: Annotated[
        Optional[float], typer.Option(help="Peak TFLOP/s per device, for MFU (known GPUs are automatic).")
    ] = None,
    stop_after: Annotated[
        Optional[int], typer.Option(help="Stop after N steps in this invocation (re-run the same command to continue).")
    ] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    act_ckpt: Annotated[
        bool, typer.Option("--activation-checkpointing", help="Recompute block activations in backward.")
    ] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Under torchrun: shard with FSDP2 instead of DDP.")] = False,
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    optimizer: OptimizerOpt = None,
    recipe: RecipeOpt = None,
    qk_norm: QkNormOpt = None,
    mlp_act: MlpActOpt = None,
    zero_init_proj: ZeroInitOpt = None,
    logit_softcap: SoftcapOpt = None,
    tie_embeddings: TieOpt = None,
    embed_lr: EmbedLrOpt = None,
    head_lr: HeadLrOpt = None,
    log_to: LogToOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Pretrain a Llama-style decoder with next-token cross-entropy on packed token windows.

    Runs alone or under `torchrun --nproc_per_node N -m llmctl pretrain ...` (DDP, or FSDP2 with --fsdp;
    --tp 2 for tensor parallelism in groups of 2 ranks, with FSDP2 across the groups).
    Writes RUN/metrics.jsonl, RUN/checkpoints/step_N (safetensors + config + tokenizer + resume state)
    and RUN/_manifest.json when finished.
    """
    from llmctl.train import distributed as D  # torch: kept out of --help
    from llmctl.train.pretrain import PretrainConfig, pretrain, recipe_flags  # torch: kept out of --help

    flags = {
        "model.preset": preset,
        "init_from": from_,
        "model.n_layer": n_layer,
        "model.n_head": n_head,
        "model.n_kv_head": n_kv_head,
        "model.d_model": d_model,
        "seq_len": seq_len,
        "batch_tokens": batch_tokens,
        "train.micro_batch": micro_batch,
        "train.steps": steps,
        "train.lr": lr,
        "train.warmup_steps": warmup,
        "train.schedule": schedule,
        "train.grad_clip": grad_clip,
        "train.eval_every": eval_every,
        "train.ckpt_every": ckpt_every,
        "train.seed": seed,
        "train.dtype": dtype,
        "train.device": device,
        "train.peak_tflops": peak_tflops,
        "train.stop_after": stop_after,
        "train.compile": compile_ or None,
        "train.activation_checkpointing": act_ckpt or None,
        "train.fsdp": fsdp or None,
        "train.tp": tp,
        "train.optimizer": optimizer,
        "train.log_to": log_to,
        "model.qk_norm": qk_norm,
        "model.mlp_act": mlp_act,
        "model.zero_init_proj": zero_init_proj,
        "model.logit_softcap": logit_softcap,
        "model.tie_embeddings": tie_embeddings,
        "train.embed_lr": embed_lr,
        "train.head_lr": head_lr,
    }
    cfg = C.load(PretrainConfig, config, set_, flags, base=recipe_flags(recipe))
    if print_config_:
        return print_config(cfg)
    try:
        s = pretrain(tokens, tokenizer, output, cfg, resume=resume, overwrite=overwrite, mix=mix)
    finally:
        D.shutdown()
    val = f", val loss {s['val_loss']:.4f}" if "val_loss" in s else ""
    D.print0(
        f"{run_state(s)}: loss {s.get('loss', float('nan')):.4f}{val}, {s.get('tokens', 0):,} tokens in {s['seconds']:.1f} s "
        f"({s['tokens_per_s_avg']:,.0f} tok/s); checkpoint {s['checkpoint']}"
    )


@app.command("generate")
def generate_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint or run directory.")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Most new tokens.")] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (same seed = same text).")] = 0,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Independent samples.")] = 1,
    tokenizer: Annotated[
        Optional[str], typer.Option("--tokenizer", "-t", help="Tokenizer dir (default: the checkpoint's).")
    ] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="PROMPT is a user turn in the chat template; print the assistant's reply.")
    ] = False,
) -> None:
    """Continue PROMPT with a trained model (temperature, top-k, top-p; KV cache), or answer it with --chat."""
    from llmctl.model.generate import generate_text  # torch: kept out of --help

    for i in range(num_samples):
        text = generate_text(
            checkpoint,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed + i,
            tokenizer_dir=tokenizer,
            chat=chat,
        )
        typer.echo(text if chat else prompt + text)
        if i + 1 < num_samples:
            typer.echo("-" * 40)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint or run directory.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Hugging Face model directory to write.")],
    overwrite: OverwriteOpt = False,
    split_special_tokens: Annotated[
        bool,
        typer.Option(
            "--split-special-tokens/--no-split-special-tokens",
            help="Special-token strings typed in text ('<|user|>') stay text, as in llmctl (transformers' "
            "split_special_tokens); --no-split-special-tokens: they become special ids, the usual Hugging Face behaviour.",
        ),
    ] = True,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="A LoRA run: fold its adapters into the base weights and export the result."),
    ] = False,
) -> None:
    """Write a Hugging Face LlamaForCausalLM directory (safetensors, config.json, tokenizer.json + tokenizer files)."""
    from llmctl.export.hf import export_hf  # torch: kept out of --help

    path = export_hf(checkpoint, output, overwrite=overwrite, split_special_tokens=split_special_tokens, merge=merge)
    typer.echo(f"exported {path} (load with transformers.AutoModelForCausalLM.from_pretrained)")


@app.command("plot")
def plot_cmd(
    runs: Annotated[list[str], typer.Argument(help="Run directories (with metrics.jsonl).")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="PNG file (default RUN/loss.png).")] = None,
    x: Annotated[str, typer.Option(help="x axis: step or tokens.")] = "step",
) -> None:
    """Render train and validation loss curves of one or more runs to a PNG."""
    from llmctl.utils.plot import plot_runs  # matplotlib: kept out of --help

    path = plot_runs(runs, output, x=x)
    typer.echo(f"wrote {path}")
