"""The shared generation engine: a left-padded batch generates what each prompt would alone."""

import pytest
import torch

from llmctl.model.generate import generate, generate_batch
from llmctl.model.transformer import ModelConfig, Transformer


def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64))
    for p in m.parameters():
        p.data.add_(0.2 * torch.randn_like(p))
    return m.eval()


PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [7], [2, 7, 1, 8, 2], [1, 1, 2, 3, 5, 8, 13, 21, 34, 5, 5]]


def test_greedy_batch_equals_one_prompt_at_a_time():
    m = model()
    alone = [generate(m, p, 15, temperature=0) for p in PROMPTS]
    got = generate_batch(m, PROMPTS, 15, temperature=0, pad_id=0)
    assert got.tokens == alone
    assert got.new_tokens == sum(map(len, alone)) and got.tokens_per_s > 0
    # without the cache the padded batch recomputes the whole prefix: the same tokens again
    assert generate_batch(m, PROMPTS, 15, temperature=0, use_cache=False).tokens == alone


def test_padded_rows_give_the_logits_of_the_prompt_alone():
    m = model()
    # a padding value that would change the result if the mask let a row see it
    for pad in (0, 49):
        got = generate_batch(m, PROMPTS, 6, temperature=0, pad_id=pad).tokens
        assert got == [generate(m, p, 6, temperature=0) for p in PROMPTS]


def test_per_row_generators_sample_what_each_row_samples_alone():
    m = model()
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]
    got = generate_batch(m, PROMPTS, 12, temperature=1.0, top_k=20, generator=gens).tokens
    alone = [generate(m, p, 12, temperature=1.0, top_k=20, seed=100 + i) for i, p in enumerate(PROMPTS)]
    assert got == alone


def test_repeated_prompts_sample_what_each_row_samples_alone():
    """GRPO's G copies of a prompt share one prefill, and rows that stopped leave the batch: every row
    still samples what it would alone (per-row generators) or without the cache (one generator),
    padded batch or not."""
    m = model()
    stops = tuple(range(0, 50, 6))  # rows end at different steps
    for prompts in (
        [PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[0], PROMPTS[2], PROMPTS[1]],  # padded
        [PROMPTS[2]] * 3 + [[9, 8, 7, 6, 5]] * 2,  # one width: no mask
    ):
        gens = [torch.Generator().manual_seed(200 + i) for i in range(len(prompts))]
        got = generate_batch(m, prompts, 12, temperature=1.0, generator=gens, pad_id=0, stop_ids=stops)
        alone = [generate(m, p, 12, temperature=1.0, seed=200 + i, stop_ids=stops) for i, p in enumerate(prompts)]
        assert got.tokens == alone
        assert 1 < len({len(t) for t in got.tokens}) and any(got.ended)
        shared = generate_batch(m, prompts, 12, temperature=1.0, seed=5, pad_id=0, stop_ids=stops).tokens
        no_cache = generate_batch(m, prompts, 12, temperature=1.0, seed=5, pad_id=0, stop_ids=stops, use_cache=False)
        assert shared == no_cache.tokens
        assert len({tuple(t) for t in shared}) > len({tuple(p) for p in prompts})  # copies diverge after the prompt


def test_stop_ids_end_a_row_and_are_reported():
    m = model()
    greedy = generate_batch(m, PROMPTS, 10, temperature=0).tokens
    stop = greedy[0][3]
    got = generate_batch(m, PROMPTS, 10, temperature=0, stop_ids=(stop,))
    assert got.tokens[0] == greedy[0][:3] and got.ended[0]
    for row, full, ended in zip(got.tokens, greedy, got.ended):
        assert row == (full[: full.index(stop)] if stop in full else full)
        assert ended == (stop in full)


def test_eval_generation_does_not_depend_on_the_batch_size(tmp_path):
    """eval's LM.generate_many (exact_match, degeneration, winrate): batch 1 and 4 give what LM.generate
    gives one prompt at a time, greedy and sampled (one seed per prompt), with stop strings too."""
    from align_helpers import tiny_checkpoint

    from llmctl.eval.lm import LlmctlLM

    lm = LlmctlLM(tiny_checkpoint(tmp_path / "ck", seed=3, max_seq_len=64))
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # peakier than init, so sampled rows differ
    prompts = [lm.codec.encode(t) for t in ("Question: 2 + 3?", "A", "Natalia sold clips to 48 of her friends", "7")]
    seeds = [10, 11, 12, 13]
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_k=30), dict(temperature=1.0, stop_text=("e",))):
        alone = [lm.generate(p, 12, seed=s, **kw) for p, s in zip(prompts, seeds)]
        for bs in (1, 4):
            assert lm.generate_many(prompts, 12, seeds=seeds, batch_size=bs, **kw) == alone, (kw, bs)


@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.9)])
def test_a_draw_with_one_generator_a_row_is_torch_multinomial_row_by_row(top_k, top_p):
    """The per-row draw gives the ids torch.multinomial gives each row alone from its generator, and
    leaves every generator in the state multinomial leaves it (so the next draw matches too)."""
    from llmctl.model.generate import _draw, filter_logits

    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 3
    ours = [torch.Generator().manual_seed(100 + i) for i in range(64)]
    theirs = [torch.Generator().manual_seed(100 + i) for i in range(64)]
    for temperature in (1.0, 0.7):
        got = _draw(logits, temperature, top_k, top_p, ours)
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        want = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g)[:, 0] for i, g in enumerate(theirs)])
        assert torch.equal(got, want)
        assert len(set(got.tolist())) > 5  # a real draw, not one id
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs))
