"""The IsoFLOP grid of `llmctl sweep`: model shapes, their FLOPs per token, and points at each budget.

A point is one shape trained for D tokens at one compute budget C, with D = C / F and F the
training FLOPs per token of that shape exactly as the MFU figure counts them
(`Transformer.flops_per_token`: 6 x the matmul parameters plus 12 x n_layer x d_model x T for
attention). N, the parameter count the fits use, is the matmul parameters, (F - attention) / 6:
with tied embeddings it is the model's total parameter count (Chinchilla counts total parameters).

Shapes come from a ladder (`LADDER`: depth grows with width, head dim 16, as nanochat's miniseries
ties depth and width) or from `--sizes LxD,...`. For each budget the grid takes
`points` shapes whose N are spread evenly in log N over [lo, hi] x the expected optimum, where
the expected optimum follows Chinchilla's rule C = 6 N D with D = tokens_per_param x N.
Tokens are rounded to whole optimizer steps; the batch is halved (down to one window) until a
point has at least `min_steps` steps, so every point's actual FLOPs are within
1 / (2 min_steps) of its budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from llmctl.errors import UsageError

# (n_layer, d_model): depth grows with width (about d_model / 32) in steps of ~1.3-1.6x in N at a small vocabulary
LADDER = (
    (1, 16),
    (1, 24),
    (1, 32),
    (1, 40),
    (1, 48),
    (1, 64),
    (2, 64),
    (2, 80),
    (2, 96),
    (3, 96),
    (3, 128),
    (4, 128),
    (4, 160),
    (5, 192),
    (6, 224),
    (6, 256),
    (8, 320),
    (8, 384),
    (10, 448),
    (12, 512),
    (12, 640),
    (14, 768),
    (16, 1024),
    (20, 1280),
    (24, 1536),
    (24, 2048),
)


FEW_STEPS = 25  # a point needs this many steps: whole steps then miss its budget by at most 2%


@dataclass(frozen=True)
class Shape:
    n_layer: int
    d_model: int
    n_head: int

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-d{self.d_model}"


@dataclass
class Point:
    """One run of the grid (all plain values: it goes to _sweep.json, the table and the tasks)."""

    name: str
    budget: float  # the intended C
    n_layer: int
    d_model: int
    n_head: int
    params: int  # N: matmul parameters
    flops_per_token: float  # F
    batch_tokens: int
    steps: int
    tokens: int  # D = steps x batch_tokens
    flops: float  # the actual C = F x D

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GridConfig:
    budgets: list[float] = field(default_factory=lambda: [1e11, 3e11, 1e12])  # CPU-sized (docs/sweep.md)
    points: int = 5  # shapes per budget
    tokens_per_param: float = 20.0  # where the grid is centred (Chinchilla's rule)
    lo: float = 0.3  # the grid spans lo..hi x the expected optimum N
    hi: float = 3.0
    sizes: list[str] = field(default_factory=list)  # explicit shapes "LxD" (n_layer x d_model); empty = the ladder
    seq_len: int = 128
    batch_tokens: int = 512  # small models learn per step, not per token: 4 windows of 128 a step
    min_steps: int = 50


def heads_for(d_model: int) -> int:
    """Head dim 16 (8 where 16 does not divide the width)."""
    return d_model // (16 if d_model % 16 == 0 else 8)


def parse_sizes(sizes: list[str]) -> list[Shape]:
    """ "LxD" (or "LxDxH" with H heads) -> shapes; a bad one is a one-line error."""
    out = []
    for s in sizes:
        m = re.fullmatch(r"\s*(\d+)x(\d+)(?:x(\d+))?\s*", str(s))
        if not m:
            raise UsageError(f"--sizes: {s!r} is not LAYERSxWIDTH (e.g. 2x64) or LAYERSxWIDTHxHEADS")
        layers, width = int(m.group(1)), int(m.group(2))
        heads = int(m.group(3)) if m.group(3) else heads_for(width)
        if layers < 1 or width < 2 or heads < 1 or width % heads or (width // heads) % 2:
            raise UsageError(f"--sizes: {s!r}: width {width} must split into {heads} heads of an even size")
        out.append(Shape(layers, width, heads))
    return out


def model_config(shape: Shape, vocab_size: int, seq_len: int):
    from llmctl.model.transformer import ModelConfig  # torch: kept out of sweep fit and report

    return ModelConfig(
        vocab_size=vocab_size, n_layer=shape.n_layer, n_head=shape.n_head, d_model=shape.d_model, max_seq_len=seq_len
    )


def shape_flops(shape: Shape, vocab_size: int, seq_len: int) -> tuple[int, float]:
    """(N, F) of a shape: matmul parameters and training FLOPs per token, counted as
    `Transformer.flops_per_token` counts them (6 per parameter outside the input embedding, the
    tied lm head included, plus attention), from the shape alone: building the model of a large
    shape, even on the meta device, takes seconds (tests/test_sweep_grid.py holds the two equal)."""
    mc = model_config(shape, vocab_size, seq_len)
    d, kv = mc.d_model, mc.n_kv_head * mc.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * mc.d_ff + 2 * d  # q, o; k, v; SwiGLU; two RMSNorms
    n = mc.n_layer * per_layer + d + vocab_size * d  # final norm; the lm head (tied to the embedding)
    return n, float(6 * n + 12 * mc.n_layer * d * seq_len)


def candidate_shapes(cfg: GridConfig, vocab_size: int) -> list[tuple[Shape, int, float]]:
    shapes = parse_sizes(cfg.sizes) if cfg.sizes else [Shape(n, d, heads_for(d)) for n, d in LADDER]
    return sorted(((s, *shape_flops(s, vocab_size, cfg.seq_len)) for s in shapes), key=lambda x: x[1])


def expected_optimum(budget: float, tokens_per_param: float) -> float:
    """N where C = 6 N D and D = tokens_per_param x N."""
    return math.sqrt(budget / (6 * tokens_per_param))


def point_at(shape: Shape, params: int, fpt: float, budget: float, cfg: GridConfig) -> Point:
    """Train `shape` for C / F tokens, in whole steps of a batch that leaves at least min_steps steps."""
    bt = cfg.batch_tokens
    steps = round(budget / fpt / bt)
    while steps < cfg.min_steps and bt // 2 >= cfg.seq_len and (bt // 2) % cfg.seq_len == 0:
        bt //= 2
        steps = round(budget / fpt / bt)
    if steps < FEW_STEPS:  # rounding to whole steps would miss the budget by more than 2%
        raise UsageError(
            f"budget {budget:.3g} FLOPs gives {shape.name} only {steps} step(s) of one {cfg.seq_len}-token "
            f"window ({fpt * bt:.3g} FLOPs each; at least {FEW_STEPS} keep it within 2%): raise the budget, "
            "lower --seq-len or choose smaller --sizes"
        )
    return Point(
        name=f"C{budget:.3g}-{shape.name}".replace("+", ""),
        budget=budget,
        n_layer=shape.n_layer,
        d_model=shape.d_model,
        n_head=shape.n_head,
        params=params,
        flops_per_token=fpt,
        batch_tokens=bt,
        steps=steps,
        tokens=steps * bt,
        flops=fpt * steps * bt,
    )


def budget_points(budget: float, cfg: GridConfig, shapes: list[tuple[Shape, int, float]]) -> list[Point]:
    """The budget's points: shapes nearest to `points` targets log-spaced over [lo, hi] x N_opt."""
    centre = expected_optimum(budget, cfg.tokens_per_param)
    if cfg.sizes:  # explicit shapes: every one of them at every budget
        chosen = shapes
    else:
        k = max(1, cfg.points)
        targets = [centre * cfg.lo * (cfg.hi / cfg.lo) ** (i / max(1, k - 1)) for i in range(k)]
        fits = [s for s in shapes if budget / s[2] / cfg.seq_len >= FEW_STEPS] or shapes[:1]
        chosen = []
        for t in targets:
            best = min(fits, key=lambda s: abs(math.log(s[1] / t)))
            if best not in chosen:
                chosen.append(best)
    return [point_at(s, n, f, budget, cfg) for s, n, f in chosen]


def plan_grid(cfg: GridConfig, vocab_size: int) -> list[Point]:
    """Every point of the sweep, by budget then size."""
    if not cfg.budgets:
        raise UsageError("--budgets: give at least one compute budget in FLOPs, e.g. 1e11,3e11,1e12")
    if any(not (b > 0 and math.isfinite(b)) for b in cfg.budgets):
        raise UsageError(f"--budgets: every budget must be a positive number of FLOPs, got {cfg.budgets}")
    if cfg.batch_tokens % cfg.seq_len:
        raise UsageError(f"batch_tokens {cfg.batch_tokens} is not a multiple of seq_len {cfg.seq_len}")
    if not 0 < cfg.lo < cfg.hi:
        raise UsageError(f"the grid's span needs 0 < lo < hi, got lo={cfg.lo}, hi={cfg.hi}")
    if cfg.points < 1 and not cfg.sizes:
        raise UsageError(f"--points: give at least 1 model size per budget (3 or more for a fit), got {cfg.points}")
    shapes = candidate_shapes(cfg, vocab_size)
    return [p for b in sorted(cfg.budgets) for p in budget_points(float(b), cfg, shapes)]


def nearest_shape(params: float, cfg: GridConfig, vocab_size: int) -> tuple[Shape, int, float]:
    """The candidate shape whose N is nearest (in log) to `params`."""
    return min(candidate_shapes(cfg, vocab_size), key=lambda s: abs(math.log(s[1] / params)))
