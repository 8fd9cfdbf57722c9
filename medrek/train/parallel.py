"""Data parallelism for the trainer: which share of a step's batch this process computes, and the
collective operations that make N processes take the step one process would take.

:class:`SingleProcess` is the default (every operation is the identity). :class:`ProcessGroup`
wraps an initialised ``torch.distributed`` group, e.g. the one ``accelerate launch`` sets up
(NCCL on GPUs, gloo on CPUs); ``medrek.train.distributed`` builds it.

How a step is split (exact, not approximate): every process draws the same global batch (same
seed) and computes the retrieval terms on all of it (cheap: heads over cached features), so
those terms and their gradients are the same everywhere. The LM rows, the expensive part, are
sharded by record (``rank::world_size``). Token-mean losses are made global by dividing each
process's sum by the all-reduced token count, and gradients are averaged over processes, as
DDP does. The step then equals the single-process step up to floating-point summation order.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["SingleProcess", "ProcessGroup"]


class SingleProcess:
    """One process does the whole batch."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> torch.Tensor:
        """Positions in a batch of ``n`` records whose LM rows this process computes."""
        return torch.arange(self.rank, n, self.world_size)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over processes (no gradient flows through it)."""
        return value

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over processes (parameters without one keep none)."""

    def barrier(self) -> None:
        """Wait for every process."""


class ProcessGroup(SingleProcess):
    """The default ``torch.distributed`` group (initialised by the launcher)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: start through `accelerate launch` "
                               "(see medrek.train.distributed)")
        self._dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        out = value.detach().clone()
        self._dist.all_reduce(out)
        return out

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        # every process runs the same graph, so the same parameters have gradients everywhere
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads])  # one all-reduce per step
        self._dist.all_reduce(flat)
        flat /= self.world_size
        for p, piece in zip(params, torch.split(flat, [g.numel() for g in grads])):
            p.grad = piece.view_as(p)

    def barrier(self) -> None:
        self._dist.barrier()
