"""Muon on 2 CPU processes (gloo).

- One step on FSDP2 shards with given gradients equals torch's Muon on the whole matrices
  (llmctl.train.optim.Muon orthogonalizes the full matrix; Newton-Schulz per shard would not).
- End to end, DDP and FSDP2 give the 1-process losses within 1e-5; the weights agree to ~1e-4,
  not 1e-6 as with AdamW: Newton-Schulz runs in bf16, so the float-order differences of the
  gradient reduction come out as bf16 rounding differences of the update. The FSDP run stops
  halfway and a single process resumes it from the gathered checkpoint (momentum included).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pretrain_helpers import make_tokenizer, write_tokens
from test_distributed import FLAGS, assert_same_run, metrics, torchrun
from test_tp import FLAGS as TP_FLAGS
from test_tp import losses
from test_tp import torchrun as tp_torchrun

from llmctl import config as C
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.train.loop import TrainConfig, build_optimizer
from llmctl.train.optim import set_schedule
from llmctl.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

MUON = {"train.optimizer": "muon", "train.muon_momentum_warmup": 2, "model.qk_norm": True}
MUON_TP = {"train.optimizer": "muon", "train.muon_momentum_warmup": 2}  # q/k norms are not tensor-parallel
MUON_ARGS = ("--optimizer", "muon", "--set", "train.muon_momentum_warmup=2", "--qk-norm")
CFG = ModelConfig(vocab_size=40, d_model=48, n_head=4, n_layer=2, d_ff=71)  # uneven shards: 36 and 35 rows
TC = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05, weight_decay=0.1)


def grads_at(step: int, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def _sharded_steps(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    torch.manual_seed(0)
    m = Transformer(CFG)
    for block in m.layers:
        fully_shard(block)
    fully_shard(m)
    opt = build_optimizer(m, TC)
    for step in range(3):
        full = grads_at(step, m)
        for n, p in m.named_parameters():
            p.grad = distribute_tensor(full[n], p.device_mesh, p.placements)
        set_schedule(opt, step, TC.lr, TC)
        opt.step()
    state = {n: p.full_tensor() for n, p in m.named_parameters()}
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def test_sharded_muon_step_equals_the_whole_matrix_step(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_steps, args=(port, str(tmp_path / "w.pt")), nprocs=2)
    sharded = torch.load(tmp_path / "w.pt")
    torch.manual_seed(0)
    m = Transformer(CFG)
    opt = build_optimizer(m, TC)
    assert type(opt.optimizers[0]).__mro__[1] is torch.optim.Muon
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for step in range(3):
        for n, g in grads_at(step, m).items():
            dict(m.named_parameters())[n].grad = g
        set_schedule(opt, step, TC.lr, TC)
        opt.step()  # plain tensors: torch's own Muon step
    for n, p in m.named_parameters():
        assert torch.allclose(sharded[n], p.detach(), atol=1e-6, rtol=0), n
        assert not torch.allclose(before[n], p.detach(), atol=1e-3), n  # it moved


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("muon_dist")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    pretrain(root / "tokens", root / "tok", root / "single", C.load(PretrainConfig, None, None, {**FLAGS, **MUON}))
    return root


def test_muon_ddp_two_processes_equal_one(single):
    torchrun(single, "ddp", *MUON_ARGS)
    assert_same_run(single / "single", single / "ddp", weight_atol=1e-3)  # bf16 Newton-Schulz (module docstring)


def test_muon_fsdp_two_processes_equal_one_and_resume_on_one(single):
    torchrun(single, "fsdp", "--fsdp", "--stop-after", "2", *MUON_ARGS)
    assert metrics(single / "fsdp")[0] == pytest.approx(metrics(single / "single")[0][:2], rel=1e-5)
    cfg = C.load(PretrainConfig, None, None, {**FLAGS, **MUON})
    pretrain(single / "tokens", single / "tok", single / "fsdp", cfg, resume=True)
    assert_same_run(single / "single", single / "fsdp", weight_atol=1e-3)


def test_muon_tensor_parallel_equals_one_process(single):
    """--tp 2: q/k/v, gate/up split by rows and o/down by columns over 2 ranks; the same run. The
    forward itself sums in another order here (AdamW: within 1e-5), which bf16 Newton-Schulz turns
    into losses ~2e-5 apart after 5 steps."""
    pretrain(
        single / "tokens", single / "tok", single / "tp1", C.load(PretrainConfig, None, None, {**TP_FLAGS, **MUON_TP})
    )
    tp_torchrun(single, "tp2", 2, "--tp", "2", "--optimizer", "muon", "--set", "train.muon_momentum_warmup=2")
    tp1, tp2 = losses(single / "tp1"), losses(single / "tp2")
    assert tp2[:3] == pytest.approx(tp1[:3], rel=1e-5) and tp2 == pytest.approx(tp1, rel=1e-4)
