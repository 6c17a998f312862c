"""A Hugging Face Llama directory served as an llmctl Transformer: transformers' logits, the checkpoint's tokens."""

from __future__ import annotations

import torch
from serve_helpers import client, live_server
from transformers import LlamaForCausalLM

from llmctl.export.hf import export_hf
from llmctl.model.generate import generate
from llmctl.serve.load import load_model


def test_exported_llama_dir_serves_like_its_checkpoint(checkpoint, tmp_path):
    hf = export_hf(checkpoint, tmp_path / "hf")
    model, codec, _ = load_model(str(hf))
    mine, my_codec, _ = load_model(str(checkpoint))
    ids = codec.encode("The little dog")
    assert ids == my_codec.encode("The little dog")
    with torch.no_grad():
        want = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()(input_ids=torch.tensor([ids])).logits
        assert (model(torch.tensor([ids])) - want).abs().max() < 1e-4
    new = generate(model, ids, 16, temperature=0, stop_ids=codec.stop_ids)
    assert new == generate(mine, ids, 16, temperature=0, stop_ids=my_codec.stop_ids)
    msgs = [{"role": "user", "content": "Hi!"}]
    assert codec.chat(msgs) == my_codec.chat(msgs)  # the exported chat template
    reply = generate(model, codec.chat(msgs), 16, temperature=0, stop_ids=codec.stop_ids)
    with live_server(hf, name="m") as (url, _):
        c = client(url)
        r = c.completions.create(model="m", prompt="The little dog", max_tokens=16, temperature=0)
        assert r.choices[0].text == codec.decode(new)
        chat = c.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0)
        assert chat.choices[0].message.content == codec.decode(reply)
