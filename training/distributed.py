"""Data-parallel training across processes with PyTorch's DistributedDataParallel.

Launched by ``torchrun --nproc_per_node=N -m training train ...``: torchrun sets RANK,
WORLD_SIZE and the rendezvous variables, and every process runs the same trainer. Without
torchrun there is one process and nothing here does any communication.

How it fits the recipes (Li et al., "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training", VLDB 2020, for how DDP averages gradients):

- ``--batch-size`` is the *global* batch: each step, every rank takes its own slice of the
  same shuffled global batch (a distributed sampler over one shared permutation), so N
  processes see exactly the images one process would, and the averaged gradient equals the
  one-process gradient. That is also why a checkpoint resumes under a different N.
- The recipes compute each loss inside ``Recipe.forward(fn, ...)``. Here that call goes
  through one DDP-wrapped module (``LossForward``), so DDP sees one forward per backward even
  for recipes that call several methods (encode, decode, the GAN's generator and critic).
  ``find_unused_parameters`` lets a step use only part of the model (the critic step leaves
  the generator out); DDP then all-reduces every gradient the step produced, for each of
  the GAN's two optimizers alike.
- Only rank 0 shows progress, validates, writes checkpoints and the artifact; the others
  wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class LossForward(nn.Module):
    """``forward(fn, *args) = fn(model, *args)``: lets DDP wrap any loss computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, processes): which slice of each global batch this process trains on."""
        return self.rank, self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def wrap(self, model: nn.Module) -> Callable[..., Any]:
        """The callable recipes compute their losses through."""
        forward = LossForward(model)
        if self.size == 1:
            return forward
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(
            forward,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def check_in_sync(self, model: nn.Module) -> float:
        """Largest difference of any parameter between ranks; raises if they diverged.

        DDP keeps parameters identical only if every gradient was averaged: a loss computed
        outside ``Recipe.forward`` would let them drift apart silently, so this is checked
        before the artifact is written. Buffers (BatchNorm statistics) legitimately differ
        after each rank's last forward; DDP broadcasts rank 0's at every forward, and rank 0
        writes the artifact.
        """
        if self.size == 1:
            return 0.0
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        gap = float((high - low).max())
        if gap > 1e-4:
            raise RuntimeError(f"the {self.size} replicas diverged (max difference {gap:.3g})")
        return gap

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            gc.collect()  # the DDP wrapper sits in reference cycles and holds the group
            dist.destroy_process_group()


def launched_processes() -> int:
    """How many processes torchrun started for this job (its WORLD_SIZE); 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_world(device: torch.device | None = None) -> World:
    """Join the process group torchrun describes in the environment (or stay alone): NCCL
    between GPUs (``device`` cuda, one per process), gloo between CPU processes."""
    size = launched_processes()
    if size <= 1:
        return World()
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), backend=backend)
