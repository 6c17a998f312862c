"""A policy's preference on pairs from its own log-probabilities: DPO's implicit reward.

h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)) (Rafailov et al. 2023).
`implicit_accuracy`: share of pairs with h > 0 (a tie counts 0.5), `implicit_margin`: mean beta * h;
`likelihood_accuracy` (log pi(y_c|x) > log pi(y_r|x)) for the policy and the reference. Log-probs
are summed over the reply tokens on DPO's chat encoding and `max_len`. The reference is the one a
DPO run recorded (refused if its weights changed since), or `prefs.reference`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmctl.data.chat_data import encode_responses, to_messages
from llmctl.errors import UsageError
from llmctl.eval.base import is_hf_dir, mean_stderr
from llmctl.eval.lm import LlmctlLM
from llmctl.model.checkpoint import resolve_checkpoint, weights_file
from llmctl.store.dataset import MANIFEST, fingerprint_file


def dpo_reference(model_path: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(reference lineage, DPO config) recorded by the DPO run of an llmctl checkpoint, else None."""
    if is_hf_dir(model_path):
        return None
    p = resolve_checkpoint(model_path)
    man = json.loads((p / MANIFEST).read_text()) if (p / MANIFEST).is_file() else {}
    if man.get("stage") != "dpo":
        return None
    cfg = man.get("config", {})
    ref = man.get("reference")
    if ref is None:  # a run from before the reference was recorded: --ref, else --from
        inputs = man.get("inputs", [])
        ref = inputs[2] if cfg.get("ref") and len(inputs) > 2 else inputs[1]
    return ref, cfg


def _checked_reference(ref: dict[str, Any]) -> Path:
    p = Path(ref["path"])
    if not p.exists():
        raise UsageError(f"the DPO run's reference {p} is gone; pass one with --set prefs.reference=CKPT")
    p = resolve_checkpoint(p)
    if ref.get("fingerprint") and fingerprint_file(weights_file(p)) != ref["fingerprint"]:
        raise UsageError(
            f"the DPO run's reference {p} has changed since (its weights' fingerprint differs); "
            "pass the original with --set prefs.reference=CKPT"
        )
    return p


def response_logps(lm: Any, tok: Any, pairs: list, max_len: int, batch_size: int) -> list[tuple[float, float]]:
    """(log p(chosen|prompt), log p(rejected|prompt)) per pair, summed over the reply tokens."""
    inputs, targets = [], []
    for prompt, chosen, rejected in pairs:
        for e in encode_responses(tok, to_messages(prompt), [chosen, rejected], max_len):
            k = sum(e.mask)
            assert all(e.mask[len(e.ids) - k :]), "the reply is the tail of the sequence"
            inputs.append(e.ids[:-1])
            targets.append(e.ids[len(e.ids) - k :])
    vals = [math.fsum(v) for v, _ in lm.score(inputs, targets, batch_size)]
    return list(zip(vals[0::2], vals[1::2]))


def implicit_metrics(
    model_path: str | Path, pairs: list, reference: str, batch_size: int, device: str = "cpu", policy: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(result rows, per-pair values, lineage of the policy and reference) for `pairs`; `policy` is
    MODEL already loaded as an `LlmctlLM` (the runner's), else it is loaded here."""
    found = dpo_reference(model_path)
    beta, max_len = 0.1, 0
    if found:
        ref_rec, dcfg = found
        beta, max_len = float(dcfg.get("beta", 0.1)), int(dcfg.get("max_len", 0))
    if reference:
        ref_path = Path(reference)
    elif found:
        ref_path = _checked_reference(ref_rec)
    else:
        ref_path = None
    policy = policy if isinstance(policy, LlmctlLM) else LlmctlLM(model_path, device)
    tok = policy.tokenizer
    max_len = min(max_len or policy.max_len, policy.max_len)
    pol = response_logps(policy, tok, pairs, max_len, batch_size)
    lineage = [policy.lineage()]
    per_pair = [{"logp_chosen": c, "logp_rejected": r} for c, r in pol]
    like = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pol]
    n = len(pairs)
    rows = [
        {"task": "prefs", "metric": "likelihood_accuracy", "value": sum(like) / n, "stderr": mean_stderr(like), "n": n}
    ]
    if ref_path is not None:
        ref = LlmctlLM(ref_path, device)
        if ref.cfg.vocab_size != policy.cfg.vocab_size:
            raise UsageError(
                f"reference {ref_path} has vocab_size {ref.cfg.vocab_size}, the model {policy.cfg.vocab_size}"
            )
        refl = response_logps(ref, tok, pairs, max_len, batch_size)
        lineage.append({**ref.lineage(), "stage": "reference"})
        h = [(pc - rc) - (pr - rr) for (pc, pr), (rc, rr) in zip(pol, refl)]
        acc = [1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in h]
        margin = [beta * x for x in h]
        ref_like = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in refl]
        for d, (rc, rr), (pc, pr) in zip(per_pair, refl, pol):
            d.update(
                ref_logp_chosen=rc,
                ref_logp_rejected=rr,
                implicit_reward_chosen=beta * (pc - rc),
                implicit_reward_rejected=beta * (pr - rr),
            )
        rows += [
            {"task": "prefs", "metric": "implicit_accuracy", "value": sum(acc) / n, "stderr": mean_stderr(acc), "n": n},
            {
                "task": "prefs",
                "metric": "implicit_margin",
                "value": sum(margin) / n,
                "stderr": mean_stderr(margin),
                "n": n,
            },
            {
                "task": "prefs",
                "metric": "reference_likelihood_accuracy",
                "value": sum(ref_like) / n,
                "stderr": mean_stderr(ref_like),
                "n": n,
            },
        ]
    return rows, per_pair, lineage
