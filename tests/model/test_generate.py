"""Sampling: top-k / top-p filters against direct computations, KV cache parity, seeded determinism."""

import torch

from llmctl.model.generate import filter_logits, generate
from llmctl.model.transformer import ModelConfig, Transformer


def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64))
    for p in m.parameters():
        p.data.add_(0.2 * torch.randn_like(p))  # a peakier, less uniform distribution than at init
    return m.eval()


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [1, 3]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.05, 0.3, 0.1, 0.05])
    logits = probs.log()[None]
    for p, kept in [(0.5, {0}), (0.6, {0, 2}), (0.75, {0, 2}), (0.85, {0, 2, 3}), (1.0, {0, 1, 2, 3, 4})]:
        out = filter_logits(logits, top_p=p)
        assert set(torch.isfinite(out).nonzero()[:, 1].tolist()) == kept, p
    # the renormalised distribution is the kept probabilities over their sum
    out = filter_logits(logits, top_p=0.85).softmax(-1)[0]
    assert torch.allclose(out[[0, 2, 3]], probs[[0, 2, 3]] / 0.9, atol=1e-6)


def test_greedy_with_cache_equals_full_recompute():
    m = model()
    prompt = [3, 1, 4, 1, 5]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # independent: argmax of a full forward over the whole prefix each time
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    assert generate(m, prompt, 12, temperature=0) == ids[len(prompt) :]
    assert generate(m, prompt, 12, temperature=0, use_cache=False) == ids[len(prompt) :]


def test_sampling_is_deterministic_with_a_seed():
    m = model()
    a = generate(m, [1, 2, 3], 20, temperature=1.0, top_k=20, top_p=0.95, seed=7)
    b = generate(m, [1, 2, 3], 20, temperature=1.0, top_k=20, top_p=0.95, seed=7)
    c = generate(m, [1, 2, 3], 20, temperature=1.0, top_k=20, top_p=0.95, seed=8)
    assert a == b and len(a) == 20 and a != c
    # cached and uncached sampling draw the same tokens from the same generator
    assert generate(m, [1, 2, 3], 20, temperature=1.0, seed=7, use_cache=False) == generate(
        m, [1, 2, 3], 20, 1.0, seed=7
    )


def test_stops_at_a_stop_id_and_at_the_context_limit():
    m = model()
    greedy = generate(m, [1, 2, 3], 10, temperature=0)
    stop = greedy[4]
    out = generate(m, [1, 2, 3], 10, temperature=0, stop_ids=(stop,))
    assert out == greedy[: greedy.index(stop)]
    assert len(generate(m, [1] * 60, 50, temperature=0)) == 4  # max_seq_len 64


def test_chat_prompt_is_one_user_turn_in_the_shared_template(tmp_path):
    from pretrain_helpers import make_tokenizer

    from llmctl.model.generate import prompt_ids
    from llmctl.tokenizer.chat import encode_chat

    tok = make_tokenizer(tmp_path / "tok")
    ids = prompt_ids(tok, "How many legs do 3 cats have?", chat=True)
    user, assistant = tok.special_ids["<|user|>"], tok.special_ids["<|assistant|>"]
    assert ids[0] == user and ids[-1] == assistant  # ends where the model must answer
    # the same ids SFT trains on for this user turn (the reply would follow the assistant tag)
    sft_ids = encode_chat(
        tok, [{"role": "user", "content": "How many legs do 3 cats have?"}, {"role": "assistant", "content": "12"}]
    )[0]
    assert sft_ids[: len(ids)] == ids
    assert prompt_ids(tok, "How many legs do 3 cats have?") == tok.encode("How many legs do 3 cats have?")
