"""One process or many: torchrun set-up, DDP / FSDP2 wrapping, rank-0 printing, reductions.

Every training command runs unchanged alone (`llmctl pretrain ...`) and under
`torchrun --nproc_per_node N -m llmctl pretrain ...`: torchrun's RANK/WORLD_SIZE/LOCAL_RANK
environment decides. The backend is NCCL on GPUs and gloo on CPU (how the tests run 2 ranks).

DDP keeps a full model copy per rank and all-reduces gradients; FSDP2 (`fully_shard`, one unit
per block plus the root) shards parameters, gradients and optimizer state, so each rank holds
~1/N of the 16 bytes/param of fp32 Adam training (350M params: 5.6 GB whole, 2.8 GB per rank
on 2 ranks), at the cost of all-gathering each block's weights in forward and backward.

With `--tp N` the ranks form a (dp = world/N, tp = N) DeviceMesh: tensor parallelism inside each
group of N consecutive ranks (llmctl.train.parallel), FSDP2 over the dp dimension. Data is then
sharded over dp only (`dp_rank`, `dp`): the N ranks of a tensor-parallel group see the same batch,
and the sums the loop reports (`all_reduce_sum`) run over dp, so each token is counted once.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from llmctl.errors import UsageError
from llmctl.train import parallel as P


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    tp: int = 1  # tensor-parallel degree; the mesh is (dp, tp)
    mesh: object = None  # the 2-D DeviceMesh when tp > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def dp(self) -> int:
        """Data-parallel ranks: the number of distinct data shards."""
        return self.world // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    def layout(self) -> dict:
        """What the manifest records: processes, data x tensor degrees."""
        return {"world": self.world, "dp": self.dp, "tp": self.tp}


_DIST = Dist()


def init(device: str = "auto", tp: int = 1) -> Dist:
    """Initialise the process group when launched by torchrun; pick the device; with tp > 1, the mesh."""
    global _DIST
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: no Apple GPU is available here; use --device cpu (or auto)")
    dev = torch.device(f"cuda:{local}") if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    P.check_layout(world, tp)
    mesh = P.build_mesh(dev.type, world, tp) if tp > 1 else None
    _DIST = Dist(rank, world, local, dev, tp, mesh)
    return _DIST


def info() -> Dist:
    return _DIST


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if _DIST.master:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if _DIST.world > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the data-parallel ranks (every rank of a tensor-parallel group holds the same value)."""
    if _DIST.dp > 1:
        group = _DIST.mesh["dp"].get_group() if _DIST.mesh is not None else None
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def plain(t):
    """A DTensor (a loss under tensor parallelism) as the whole plain tensor; anything else unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def broadcast_object(obj):
    if _DIST.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group together: every rank reaches the barrier before any tears gloo down
    (a rank destroying the group while another still used it aborted at exit, ~1 run in 6)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, fsdp: bool, loss_parallel: bool = False) -> torch.nn.Module:
    """DDP (default) or FSDP2 over all ranks; the model itself unchanged when world == 1.

    With tp > 1: tensor parallelism over the mesh's tp dimension first (`loss_parallel`: the lm
    head's logits stay vocabulary-sharded), then FSDP2 over dp when dp > 1 (DDP does not compose
    with DTensor parameters; torchtitan shards the data dimension with FSDP2 too)."""
    d = _DIST
    if d.world == 1:
        return model
    mesh = None
    if d.tp > 1:
        P.apply_tp(model, d.mesh["tp"], loss_parallel)
        if d.dp == 1:
            return model
        fsdp, mesh = True, d.mesh["dp"]
    if fsdp:
        from torch.distributed.fsdp import fully_shard  # only a parallel run loads it

        for block in model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Transformer under torch.compile and DDP wrappers (FSDP2 keeps the module itself)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DDP) else model


@contextmanager
def grad_sync(model: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce on the micro-steps before the last one of an accumulation."""
    if _DIST.dp == 1 or enabled:  # tensor parallelism alone has no gradient all-reduce to skip
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model weights on CPU (collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import (  # only a parallel run loads it
        StateDictOptions,
        get_model_state_dict,
    )

    if _DIST.world == 1:
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=opts)


def _torch_optims(optim: Any) -> Any:
    """The torch optimizer (or list of them) behind llmctl's optimizer (llmctl.train.optim.Composite)."""
    inner = getattr(optim, "optimizers", None)
    if inner is None:
        return optim
    return inner[0] if len(inner) == 1 else inner


def full_optim_state(model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, unsharded (collective)."""
    from torch.distributed.checkpoint.state_dict import (  # only a parallel run loads it
        StateDictOptions,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(unwrap(model), _torch_optims(optim), options=opts)


def load_full_state(model: torch.nn.Module, optim: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Load full (unsharded) model and optimizer state on every rank, sharding as needed."""
    from torch.distributed.checkpoint.state_dict import (  # only a parallel run loads it
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(unwrap(model), model_sd, options=opts)
    set_optimizer_state_dict(unwrap(model), _torch_optims(optim), optim_sd, options=opts)
