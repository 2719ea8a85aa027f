"""Data-parallel training under `torchrun` (torch.distributed: gloo on CPU, nccl on GPU).

Only rank 0 writes files and logs. Every decision that could differ between ranks (stop now, which
checkpoint to resume, how much wall time has passed) is agreed through a collective, so no rank can
leave the loop while another waits in an all-reduce.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _reduce(self, value: float, op: Any) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=op)
        return float(t.item())

    def mean(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.SUM) / self.world

    def max(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        return self.max(1.0 if flag else 0.0) > 0

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Every rank's gradients replaced by their mean over the ranks, in one all-reduce. A parameter
        without a gradient has none on every rank (the same graph), so it is left out everywhere."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def from_main(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    rank = dist.get_rank()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return Dist(rank=rank, world=dist.get_world_size())


def shutdown(d: Dist) -> None:
    """Leave the process group. After a run that ended normally every rank first waits for the others,
    so none tears its connections down while a peer still works; then the group's C++ objects are freed
    while the interpreter is fully alive (gloo's threads outliving it abort the process at exit, seen once
    as a SIGABRT of rank 1 after a finished run). After an error no rank waits: a peer may be in another
    collective, and the closed connection is what ends it."""
    if d.world > 1 and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
