"""One GRPO step in llmctl and in TRL's GRPOTrainer from the same exported model, on the same batch.

The prompts are llmctl's (their chat-template ids checked against the exported tokenizer's
`apply_chat_template`, which TRL calls), the completions and rewards are fixed (TRL's generation is
not run), and TRL's side is its own `_get_per_token_logps_and_entropies` and `_compute_loss` on the
inputs as `_generate_and_score_completions` builds them: prompts left-padded, completions
right-padded, the completion mask up to and including the first stop token, group advantages.
Per-token log-probs, loss and gradients agree; so do the AdamW update (the Trainer's optimizer) and
a second, off-policy step. The sampling tests: llmctl's rollout samples from the distribution its
loss scores, and the same completions as transformers' generate with TRL's settings, token for token.
"""

from __future__ import annotations

import functools
import json

import pytest
import rl_helpers as H
import torch
from align_helpers import write_jsonl

from llmctl.train import distributed as D

# prompts of different lengths, so that the batches are padded (TRL left-pads prompts)
VARIED = [{"prompt": "What is " + " plus ".join(["12"] * k) + "?", "answer": "1"} for k in range(1, 9)]


def trl_side(hf_model, prompts, comps, pad_id, adv, loss_type, max_len, old=None):
    """TRL's per-token log-probs (B, Tc) and loss on these prompts and completions (`old`: pi_old's log-probs)."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    if not getattr(hf_model, "_fused_for_test", False):
        add_fused_lm_head(hf_model, temperature=1.0, outputs=("log_probs", "entropy"))  # as GRPOTrainer.__init__
        hf_model._fused_for_test = True
    b, tp, tc = len(prompts), max(map(len, prompts)), max(map(len, comps))
    prompt_ids = torch.full((b, tp), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, tp), dtype=torch.long)
    completion_ids = torch.full((b, tc), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((b, tc), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        prompt_ids[i, tp - len(p) :], prompt_mask[i, tp - len(p) :] = torch.tensor(p), 1
        completion_ids[i, : len(c)], completion_mask[i, : len(c)] = torch.tensor(c), 1
    got = {}
    fake = H.trl_grpo_self(loss_type=loss_type, max_completion_length=max_len)
    real = functools.partial(GRPOTrainer._get_per_token_logps_and_entropies, fake)

    def logps(*a, **k):
        out = real(*a, **k)
        got["logp"] = out[0]
        return out

    fake._get_per_token_logps_and_entropies = logps
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": None,
        "num_items_in_batch": completion_mask.sum().float(),
    }
    loss = GRPOTrainer._compute_loss(fake, hf_model, inputs)
    return got["logp"] * completion_mask, loss


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_one_grpo_step_equals_trls(tmp_path, loss_type):
    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from llmctl.export.hf import export_hf
    from llmctl.train.loop import lr_at
    from llmctl.train.optim import build_optimizer, set_schedule
    from llmctl.train.rl.algos import GRPO
    from llmctl.train.rl.rollout import completion_logps, load_prompts, sequences
    from llmctl.train.sft import load_start

    ck, _ = H.setup(tmp_path)
    prompt_file = write_jsonl(tmp_path / "varied.jsonl", VARIED)
    hf_dir = export_hf(ck, tmp_path / "hf", split_special_tokens=False)
    g, n_prompts = 4, 2
    cfg = H.config(
        "grpo",
        beta=0.0,
        val_fraction=0.0,
        loss_type=loss_type,
        rollout_prompts=n_prompts,
        num_generations=g,
        train={"batch_size": 8, "micro_batch": 8},
    )
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    model.train()
    tr, _, _, _ = load_prompts(prompt_file, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    items = [p for p in tr[:n_prompts] for _ in range(g)]
    assert len({len(p.ids) for p in items}) == n_prompts  # TRL left-pads the shorter prompt
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    for p in tr[:n_prompts]:  # the prompt ids TRL would tokenize
        ids = hf_tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(ids) == list(p.ids)

    gen = torch.Generator().manual_seed(0)
    stop = tok.stop_ids[0]
    comps = []
    for i in range(len(items)):  # fixed completions of 1..8 tokens, most ending in the end-of-turn token
        n = 1 + i % cfg.max_new_tokens
        c = torch.randint(10, 60, (n,), generator=gen).tolist()
        comps.append(c[:-1] + [stop] if i % 3 else c)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 1.0, 1.0, 0.0])

    ro = sequences([p.ids for p in items], comps, tok.pad_id)
    ro["scores"] = rewards
    algo = GRPO(cfg, None)
    tensors, _ = algo.prepare(model, ro, [list(range(len(items)))])
    batch = {**ro, **tensors}
    ours_logp = completion_logps(model, batch).detach() * batch["cmask"]
    loss, _ = algo.loss(model, batch)
    loss.backward()

    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf_model.train()
    mean = rewards.view(-1, g).mean(1).repeat_interleave(g)
    std = rewards.view(-1, g).std(1).repeat_interleave(g)
    adv = (rewards - mean) / (std + 1e-4)  # TRL's scale_rewards="group"
    assert torch.allclose(tensors["adv"], adv, atol=1e-6)
    theirs_logp, theirs_loss = trl_side(hf_model, [p.ids for p in items], comps, tok.pad_id, adv, loss_type, 8)
    theirs_loss.backward()

    assert ours_logp.shape == theirs_logp.shape
    assert (ours_logp - theirs_logp).abs().max().item() < 1e-5
    assert loss.item() == pytest.approx(theirs_loss.item(), abs=1e-6)
    assert_same(model, hf_model, "grad", 1e-5)

    # the optimizer step: llmctl's AdamW and clipping against the Trainer's optimizer and torch's clip
    ours_opt = build_optimizer(list(model.named_parameters()), cfg.train)
    set_schedule(ours_opt, 0, lr_at(0, cfg.train), cfg.train)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trl"),
        learning_rate=cfg.train.lr,
        adam_beta1=cfg.train.beta1,
        adam_beta2=cfg.train.beta2,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        use_cpu=True,
        report_to=[],
    )
    cls, kw = Trainer.get_optimizer_cls_and_kwargs(args, hf_model)  # the Trainer sets weight_decay per group
    hf_params = dict(hf_model.named_parameters())
    for name, p in model.named_parameters():  # the same gradients on both sides (equal above within 1e-5), so
        # the update compares the optimizers: Adam's first step g / (|g| + eps) magnifies rounding near g = 0
        hf_params[hf_name(name)].grad = p.grad.clone()
    for m, opt in (
        (model, ours_opt),
        (hf_model, cls([{"params": list(hf_model.parameters()), "weight_decay": args.weight_decay}], **kw)),
    ):
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert_same(model, hf_model, "data", 1e-7)

    # a second, off-policy step on the same batch: pi_old is the first step's policy
    batch["old_logp"] = ours_logp
    batch.pop("old_fresh", None)  # (the first step's rows are marked as still at pi_old)
    loss2, st = algo.loss(model, batch)
    loss2.backward()
    _, theirs_loss2 = trl_side(
        hf_model, [p.ids for p in items], comps, tok.pad_id, adv, loss_type, 8, old=theirs_logp.detach()
    )
    theirs_loss2.backward()
    assert loss2.item() != pytest.approx(loss.item(), abs=1e-4)  # the policy moved
    assert loss2.item() == pytest.approx(theirs_loss2.item(), rel=1e-5, abs=1e-6)
    assert_same(model, hf_model, "grad", 1e-5)


def hf_name(name: str) -> str:
    """The exported (Llama) name of an llmctl parameter."""
    return name if name == "lm_head.weight" else f"model.{name}"


def assert_same(model, hf_model, attr, tol):
    """Each llmctl parameter's `attr` (grad or data) equals the exported model's, within tol x its largest entry."""
    hf_params = dict(hf_model.named_parameters())
    for name, p in model.named_parameters():
        a = getattr(p, attr)
        b = getattr(hf_params[hf_name(name)], attr)
        assert b is not None, name
        assert (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item()), (name, (a - b).abs().max().item())


def test_rollout_samples_from_the_distribution_the_loss_scores(tmp_path, monkeypatch):
    """On-policy: the log-prob of each sampled token under the sampling distribution (batched, left-padded,
    KV-cached, temperature 1, no top-k/top-p) equals the training forward's log-prob of it."""
    import llmctl.model.generate as G
    from llmctl.train.rl.rollout import completion_logps, load_prompts, sample, sequences
    from llmctl.train.sft import load_start

    ck, _ = H.setup(tmp_path)
    prompt_file = write_jsonl(tmp_path / "varied.jsonl", VARIED)
    cfg = H.config("grpo", beta=0.0, max_new_tokens=12, val_fraction=0.0)
    assert (cfg.temperature, cfg.top_k, cfg.top_p) == (1.0, 0, 1.0)  # TRL's sampling defaults: the full distribution
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    model.train()
    tr, _, _, _ = load_prompts(prompt_file, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    items = tr
    assert len({len(p.ids) for p in items}) > 1  # left padding is exercised
    seen: list[torch.Tensor] = []
    real = G._draw

    def spy(logits, temperature, top_k, top_p, gen):
        nxt = real(logits, temperature, top_k, top_p, gen)
        seen.append(torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0])
        return nxt

    monkeypatch.setattr(G, "_draw", spy)
    out, _ = sample(model, [p.ids for p in items], cfg, tok, torch.Generator().manual_seed(0), None, cfg.temperature)
    comps = [c + ([s] if s is not None else []) for c, s in zip(out.tokens, out.stops)]
    at_sampling = torch.stack(seen, 1)
    with torch.no_grad():
        scored = completion_logps(model, sequences([p.ids for p in items], comps, tok.pad_id))
    for i, c in enumerate(comps):
        assert (at_sampling[i, : len(c)] - scored[i, : len(c)]).abs().max().item() < 1e-5, i


def test_rollout_samples_what_trls_generation_samples(tmp_path):
    """llmctl's rollout sampler and TRL's generation (transformers' generate with GRPOTrainer's settings:
    temperature 1, top_k 0, top_p 1, the exported stop ids) on the exported model, left-padded prompts,
    the same seed: the same completions, token for token."""
    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llmctl.export.hf import export_hf
    from llmctl.train.rl.rollout import load_prompts, sample
    from llmctl.train.sft import load_start

    ck, _ = H.setup(tmp_path)
    hf_dir = export_hf(ck, tmp_path / "hf", split_special_tokens=False)
    cfg = H.config("grpo", beta=0.0, max_new_tokens=10, val_fraction=0.0)
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    tr, _, _, _ = load_prompts(write_jsonl(tmp_path / "varied.jsonl", VARIED), tok, cfg.max_prompt_len, 0.0, 0)
    items = [p for p in tr for _ in range(4)]
    out, _ = sample(model, [p.ids for p in items], cfg, tok, torch.Generator().manual_seed(5), None, 1.0)
    ours = [c + ([s] if s is not None else []) for c, s in zip(out.tokens, out.stops)]

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    htok = AutoTokenizer.from_pretrained(hf_dir, padding_side="left")
    eos = list(hf.generation_config.eos_token_id)  # GRPOTrainer's eos_token_ids: the tokenizer's and these
    assert sorted(eos) == sorted(set(tok.stop_ids))
    gen = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        pad_token_id=htok.pad_token_id,
        eos_token_id=eos,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    enc = htok.apply_chat_template(
        [p.messages for p in items], add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(5)
    new = hf.generate(**enc, generation_config=gen)[:, enc["input_ids"].size(1) :].tolist()
    theirs = []
    for row in new:  # up to and including the first stop id, as GRPOTrainer's completion mask
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        theirs.append(row if cut is None else row[: cut + 1])
    assert ours == theirs


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_the_whole_loop_equals_grpo_trainers_on_the_same_rollouts(tmp_path, monkeypatch, loss_type):
    """`llmctl rl` (run_rl: rollouts, the split of each rollout into 2 optimizer steps, pi_old for the
    off-policy step, clipping, AdamW, the loop) against TRL's real GRPOTrainer.train() for 6 steps
    (3 generations), TRL fed llmctl's completions, rewards and split of each generation: the same loss
    and gradient norm at every step and the same weights at the end."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer import grpo_trainer

    import llmctl.train.rl.rollout as RR
    from llmctl.export.hf import export_hf
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.rl.trainer import run_rl

    ck, prompts = H.setup(tmp_path)
    steps = 6
    cfg = H.config(
        "grpo", steps=steps, beta=0.0, loss_type=loss_type, val_fraction=0.0, val_limit=0, train={"micro_batch": 8}
    )
    assert cfg.rollout_prompts * cfg.group == 2 * cfg.train.batch_size  # 2 steps a generation, the second off-policy
    rollouts: list[dict] = []  # per generation: prompt ids, completions (stop id included), rewards, the 2 steps' rows
    real_sample, real_roll, real_rewards = RR.sample, RR.RolloutBatches._roll, Rewards.__call__

    def sample(*a, **k):
        out, mask = real_sample(*a, **k)
        rollouts.append(
            {
                "prompts": [list(p) for p in a[1]],
                "comps": [t + [s] if s is not None else t for t, s in zip(out.tokens, out.stops)],
            }
        )
        return out, mask

    def rewards(self, *a, **k):
        total, per = real_rewards(self, *a, **k)
        rollouts[-1]["rewards"] = list(total)
        return total, per

    def roll(self):
        real_roll(self)
        rollouts[-1]["order"] = [i for mb in self.plan for i in mb]

    monkeypatch.setattr(RR, "sample", sample)
    monkeypatch.setattr(Rewards, "__call__", rewards)
    monkeypatch.setattr(RR.RolloutBatches, "_roll", roll)
    run_rl(prompts, ck, tmp_path / "run", cfg)
    assert len(rollouts) == steps // 2
    ours = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    weights = load_file(str(tmp_path / "run" / "checkpoints" / f"step_{steps:07d}" / "model.safetensors"))

    hf_dir = export_hf(ck, tmp_path / "hf", split_special_tokens=False)
    rows = [json.loads(ln) for ln in prompts.read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    at = {"gen": 0, "scored": 0}

    class Fed(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):  # llmctl's completions for the same prompts
            r = rollouts[at["gen"]]
            assert [list(p) for p in prompt_ids] == r["prompts"]
            return [list(c) for c in r["comps"]], None

    def reward(prompts, completions, **_):
        at["scored"] += 1
        return rollouts[at["scored"] - 1]["rewards"]

    def shuffle(d):  # llmctl's split: the first step trains the rollout's first micro-batch
        order = rollouts[at["gen"]]["order"]
        at["gen"] += 1
        return {
            k: v[torch.tensor(order)]
            if torch.is_tensor(v) and v.dim()
            else [v[i] for i in order]
            if isinstance(v, list)
            else v
            for k, v in d.items()
        }

    monkeypatch.setattr(grpo_trainer, "shuffle_sequence_dict", shuffle)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = cfg.train
    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        max_steps=steps,
        logging_steps=1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        num_iterations=1,
        beta=0.0,
        epsilon=cfg.cliprange,
        scale_rewards="group",
        temperature=1.0,
        learning_rate=t.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        adam_beta1=t.beta1,
        adam_beta2=t.beta2,
        adam_epsilon=1e-8,
        max_grad_norm=t.grad_clip,
        seed=t.seed,
        disable_dropout=True,
        disable_tqdm=True,
        loss_type=loss_type,
    )
    trainer = Fed(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(hf_dir),
    )
    trainer.train()
    theirs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(theirs) == len(ours) == steps
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(float(b["loss"]), rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(float(b["grad_norm"]), rel=1e-2)  # Adam magnifies rounding near g = 0
    for name, w in weights.items():
        moved = model.state_dict()[hf_name(name)] - before[hf_name(name)]
        assert moved.abs().max() > 0, name
        # Adam's steps are about +-lr even where a gradient is near 0 (rounding there can flip a sign): compare
        # the whole update
        err = ((w - before[hf_name(name)]) - moved).norm() / moved.norm()
        assert err < 0.05, (name, err.item())
