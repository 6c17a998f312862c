"""`llmctl rl`: the first PPO epoch's ratio is 1 and the KL 0 at the reference, bad input is a one-line
error with nothing written, a tiny GRPO run raises its held-out reward, and resume is exact."""

import json

import pytest
import rl_helpers as H
import torch
from align_helpers import write_jsonl

from llmctl.errors import UsageError
from llmctl.train import distributed as D
from llmctl.train.rl.trainer import run_rl


def records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_first_ppo_epoch_has_ratio_one_and_zero_kl_at_the_reference(tmp_path):
    from llmctl.train.rl.algos import PPO
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.rl.rollout import RolloutBatches, load_prompts
    from llmctl.train.rl.trainer import _load_policy
    from llmctl.train.sft import load_start

    ck, prompts = H.setup(tmp_path)
    cfg = H.config("ppo", epochs=2)
    D.init("cpu")
    model, _, tok, _ = _load_policy(ck, "ppo")
    tr, _, _, _ = load_prompts(prompts, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    ref = load_start(ck)[0].eval()
    algo = PPO(cfg, ref)
    batches = RolloutBatches(model.train(), tr, tok, cfg, algo, Rewards(cfg.reward), accum=2)
    b = next(batches)
    loss, m = algo.loss(model, b)
    assert m["policy/ratio_min"].item() == 1.0 and m["policy/ratio_max"].item() == 1.0
    assert m["policy/approxkl"].item() == 0.0 and m["policy/clipfrac"].item() == 0.0
    assert m["objective/kl"].item() == 0.0 and m["objective/non_score_reward"].item() == 0.0
    # the value head starts at 0 and the advantages are whitened over the rollout's completion tokens
    assert m["val/mean_value"].item() == 0.0
    mask = batches.rollout["cmask"]
    adv = batches.rollout["adv"][mask]
    assert abs(adv.mean().item()) < 1e-5 and adv.std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("case", ["no_prompt_column", "grpo_g1", "other_tokenizer", "reward_raises"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    ck, prompts = H.setup(tmp_path)
    out = tmp_path / "run"
    kw, want = {}, ""
    if case == "no_prompt_column":
        prompts = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello", "answer": "#### 1"}] * 8)
        want = "needs a `prompt`"
    elif case == "grpo_g1":
        with pytest.raises(UsageError, match="num-generations 2 or more"):
            H.config("grpo", num_generations=1)
        return
    elif case == "other_tokenizer":
        from llmctl.model.checkpoint import save_checkpoint
        from llmctl.model.transformer import ModelConfig
        from llmctl.tokenizer.spm import Tokenizer
        from llmctl.train.reward import RewardModel

        other = Tokenizer.train(
            [f"{w} {i}" for i in range(300) for w in ("alpha", "beta", "gamma", "delta")], vocab_size=380
        )
        other.save(tmp_path / "other_tok")
        mc = ModelConfig(vocab_size=other.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=128)
        save_checkpoint(tmp_path / "rm", RewardModel(mc), mc, other.path)
        kw = dict(reward=["rm"], reward_model=str(tmp_path / "rm"))
        want = "another tokenizer"
    elif case == "reward_raises":
        kw = dict(reward=["rl_helpers:raise_on_seven"], rollout_prompts=24)  # a rollout holds the prompt of 3 + 4
        want = "reward rl_helpers:raise_on_seven raised on prompt "
    cfg = H.config("grpo", **kw) if case != "reward_raises" else H.config("grpo", **kw, train=dict(batch_size=96))
    with pytest.raises(UsageError, match=want) as e:
        run_rl(prompts, ck, out, cfg)
    assert "\n" not in str(e.value)
    if case == "reward_raises":  # names the row whose answer is 7
        idx = int(str(e.value).split("raised on prompt ")[1].split(":")[0])
        assert H.addition_rows()[idx]["answer"] == "#### 7"
    assert not out.exists()


def test_tiny_grpo_run_raises_the_held_out_reward(tmp_path):
    ck, prompts = H.setup(tmp_path)
    s = run_rl(prompts, ck, tmp_path / "run", H.config("grpo", steps=16, train=dict(lr=3e-3, eval_every=8)))
    recs = records(tmp_path / "run")
    val = [r["val_reward"] for r in recs if "val_reward" in r]
    assert s["data"]["val_reward_start"] < 0.1 and val[-1] > s["data"]["val_reward_start"] + 0.3
    steps = [r for r in recs if "loss" in r]
    assert {"reward", "reward_std", "kl", "clip_ratio", "completions/mean_length", "gen_tokens_per_s"} <= set(steps[0])
    samples = [json.loads(ln) for ln in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in samples} == {"rollout", "held_out"} and {r["step"] for r in samples} == {8, 16}
    assert all("completion" in r and isinstance(r["reward"], float) for r in samples)
    from llmctl.model.checkpoint import load_checkpoint

    load_checkpoint(tmp_path / "run")  # an ordinary LM checkpoint
    from llmctl.report.build import build_report

    page = build_report(tmp_path, tmp_path / "report").read_text()  # tmp_path as a run root: ck and run its stages
    assert (
        "reward and KL" in page and "completions at step 16" in page and (tmp_path / "report" / "run_rl.png").is_file()
    )


def test_completion_lengths_count_the_stop_token(tmp_path, monkeypatch):
    import llmctl.train.rl.rollout as RR
    from llmctl.train.rl.algos import GRPO
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.sft import load_start

    real = RR.generate_batch

    def first_row_stops(*a, **kw):  # a random tiny model rarely ends: make row 0 end after 2 tokens
        out = real(*a, **kw)
        out.tokens[0], out.stops[0], out.ended[0] = out.tokens[0][:2], kw["stop_ids"][0], True
        return out

    monkeypatch.setattr(RR, "generate_batch", first_row_stops)
    ck, prompts = H.setup(tmp_path)
    cfg = H.config("grpo", beta=0.0)  # no reference model needed
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    tr, _, _, _ = RR.load_prompts(prompts, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    batches = RR.RolloutBatches(model.train(), tr, tok, cfg, GRPO(cfg, None), Rewards(cfg.reward), accum=2)
    next(batches)
    ro = batches.rollout
    assert ro["cmask"][0].sum().item() == 3  # 2 tokens + the stop token, which is trained
    lengths = ro["cmask"].sum(1).float()  # as TRL counts: the stop token included
    assert ro["completions/mean_length"].item() == pytest.approx(lengths.mean().item())
    assert ro["completions/min_length"].item() == 3.0


def test_instruction_prompts_and_a_notice_when_no_group_has_a_signal(tmp_path, capsys):
    from align_helpers import tiny_checkpoint

    ck = tiny_checkpoint(tmp_path / "ck", max_seq_len=128)
    rows = [
        {"instruction": f"Name a number after {i}.", "output": str(i + 1)} for i in range(20)
    ]  # AlpacaEval's columns
    prompts = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    notice = "every advantage is 0"
    run_rl(prompts, ck, tmp_path / "flat", H.config("grpo", steps=8, reward=["rl_helpers:constant"]))
    assert capsys.readouterr().out.count(notice) == 1  # 4 rollouts without a signal: said once
    samples = [json.loads(ln) for ln in (tmp_path / "flat" / "samples.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in samples} <= {r["instruction"] for r in rows}
    run_rl(prompts, ck, tmp_path / "varied", H.config("grpo", steps=8))  # digit_share differs within groups
    assert notice not in capsys.readouterr().out


def test_sampled_held_out_answers_repeat_at_every_evaluation(tmp_path):
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.rl.rollout import load_prompts
    from llmctl.train.rl.trainer import held_out_reward
    from llmctl.train.sft import load_start

    ck, prompts = H.setup(tmp_path)
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    cfg = H.config("grpo", val_temperature=1.0, val_samples=3)
    _, val, _, _ = load_prompts(prompts, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    rewards = Rewards(cfg.reward)
    a, sa = held_out_reward(model, val, tok, rewards, cfg)
    b, sb = held_out_reward(model, val, tok, rewards, cfg)
    assert a == b and sa == sb and len(sa) == 3 * len(val)  # the same seed each time: evaluations compare
    assert len({s["completion"] for s in sa[:3]}) > 1  # three samples of the first prompt
    _, greedy = held_out_reward(model, val, tok, rewards, H.config("grpo"))
    assert len(greedy) == len(val)
    with pytest.raises(UsageError, match="val_samples"):
        H.config("grpo", val_samples=0)


@pytest.mark.parametrize("algo", ["ppo"])
def test_resume_mid_rollout_continues_exactly(tmp_path, algo):
    ck, prompts = H.setup(tmp_path)
    # 2 epochs x 8 completions / batch 8: a rollout spans 2 steps; the stop after 3 is mid-rollout
    kw = dict(epochs=2, target_kl=0.01, kl_horizon=100, temperature=1.0)
    run_rl(prompts, ck, tmp_path / "full", H.config(algo, steps=6, **kw, train=dict(ckpt_every=6, eval_every=3)))
    part = run_rl(
        prompts,
        ck,
        tmp_path / "part",
        H.config(algo, steps=6, **kw, train=dict(ckpt_every=6, eval_every=3, stop_after=3)),
    )
    assert part["steps_done"] == 3 and not part["finished"]
    rest = run_rl(prompts, ck, tmp_path / "part", H.config(algo, steps=6, **kw, train=dict(ckpt_every=6, eval_every=3)))
    assert rest["finished"]
    a, b = records(tmp_path / "full"), records(tmp_path / "part")
    drop = ("tokens_per_s", "elapsed_s", "gen_tokens_per_s")
    clean = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert clean(a) == clean(b)
    assert len({r["objective/kl_coef"] for r in a if "objective/kl_coef" in r}) > 1  # the controller moved beta
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000006" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert "value_head.weight" in wa and all(torch.equal(wa[k], wb[k]) for k in wa)
