"""Multi-process runs under torchrun: the process group (gloo on CPU, nccl on GPU) and the few collectives
datagen and training need. Without torchrun's environment everything is a single process and no process
group is created."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from dream.settings import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """In place over all ranks; returns the tensor (unchanged in a single process)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def shutdown(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto", timeout: timedelta = timedelta(minutes=30)) -> Distributed:
    """Join torchrun's process group when WORLD_SIZE > 1 (else a single-process context).

    `timeout` bounds how long a rank waits in a collective: datagen ranks finish their shards at different
    times and wait at the final barrier, so it passes a long one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size == 1:
        return Distributed(device=resolved)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    return Distributed(dist.get_rank(), dist.get_world_size(), resolved)
