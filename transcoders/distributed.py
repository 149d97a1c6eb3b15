"""Data-parallel training across processes (GPUs or CPU workers) with torch.distributed.

Launch with ``torchrun --nproc-per-node N -m circuits transcoders train ...``: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK, ``init_from_env`` joins the group (NCCL on CUDA, gloo on CPU),
and ``train`` wraps its objective in DistributedDataParallel. Every rank harvests its own
share of the corpus (batch i goes to rank i % world), gradients are averaged, and the
few scalars that steer training (normalisation statistics, the L0 controller) are
all-reduced, so every rank holds the same weights after every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def context() -> DistContext:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment; a no-op without one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return context()
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return context()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (``t`` itself when not distributed)."""
    if not context().active:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def barrier() -> None:
    if context().active:
        dist.barrier()
