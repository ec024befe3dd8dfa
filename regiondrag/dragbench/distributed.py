"""Data-parallel evaluation under torchrun: which part of the work is this process's, and its collectives.

    torchrun --nproc-per-node 8 scripts/evaluate.py --data drag_data
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 --nproc-per-node 8 scripts/sweep.py ...

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous
address); `start` joins them into one torch.distributed group (gloo on CPU, nccl on GPU) and
returns this process's `Shard`. Without torchrun it is the single shard of a one-process run.
Each rank works through `shard.take(groups)` of the work and writes its own results file;
after `gather`, rank 0 reads every rank's results and writes the one table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# How long a rank that has finished its shard waits in `gather` for the slowest one. torch's
# default (30 min for gloo, 10 for nccl) is shorter than an uneven shard of a sweep; a rank
# that dies ends the whole group through torchrun, so a long wait never outlives a crash.
COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that merges the results and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's disjoint share of `items`: every world_size-th, from its rank on.
        The same items give the same share on every start, so a restarted rank resumes its own."""
        return list(items[self.rank::self.world_size])


def _cuda(device: Optional[str]) -> bool:
    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def start(device: Optional[str] = None) -> tuple[Shard, Optional[str]]:
    """(this process's shard, the device it should use): under torchrun, join the process group,
    on GPU one device per local rank; otherwise the single shard and `device` unchanged."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Shard(), device
    if not dist.is_initialized():
        if _cuda(device):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if _cuda(device) else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Shard(dist.get_rank(), dist.get_world_size()), device


def gather(shard: Shard, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (a synchronisation point)."""
    if not shard.distributed:
        return [value]
    values = [None] * shard.world_size
    dist.all_gather_object(values, value)
    return values


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
