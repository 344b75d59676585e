"""Distributed data-parallel training helpers: process group, devices and episode sampling.

The MONAI bundle's ``multi_gpu_train.json`` runs one process per device under ``torchrun``.
Every process builds the same network from the same seed, draws its own episodes and averages
gradients with PyTorch's ``DistributedDataParallel``. An episode stays a pure function of
(run seed, step index), so the processes only need distinct step indices:
:class:`EpisodeStepSampler` gives process ``r`` of ``W`` the steps ``start + i W + r``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import ignite.distributed as idist
import torch
import torch.distributed as dist
from monai.data import DistributedSampler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler

from japc.errors import ConfigError

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "is_main_process",
    "local_device",
    "init_process_group",
    "destroy_process_group",
    "wrap_ddp",
    "evaluation_sampler",
    "EpisodeStepSampler",
]

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("cuda", "cpu")


def is_distributed() -> bool:
    """Return whether this process belongs to an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the group (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Return whether this process writes checkpoints and logs (rank 0)."""
    return rank() == 0


def _local_rank() -> int:
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        raise ConfigError(
            "LOCAL_RANK is not set, so this is not a torchrun process. Start multi-process training with "
            "torchrun --nproc_per_node N -m monai.bundle run --config_file "
            "\"['configs/train.json','configs/multi_gpu_train.json']\"."
        )
    return int(value)


def local_device(device_type: str = "cuda") -> torch.device:
    """Return the device of this torchrun process: ``cuda:<LOCAL_RANK>`` or the CPU.

    Raises:
        ConfigError: unknown device type, CUDA requested on a machine without it, or no torchrun.
    """
    if device_type not in DEVICE_TYPES:
        raise ConfigError(f"Unknown device type {device_type!r} for distributed training; use one of {DEVICE_TYPES}.")
    local_rank = _local_rank()
    if device_type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "device_type is 'cuda' but PyTorch sees no CUDA device. On CPUs run with --device_type cpu --backend gloo."
        )
    return torch.device("cuda", local_rank)


def init_process_group(backend: str = "nccl", device_type: str = "cuda") -> torch.device:
    """Join the process group that torchrun describes in the environment; returns this process's device.

    Args:
        backend: ``nccl`` for CUDA devices, ``gloo`` for CPUs.
        device_type: ``cuda`` or ``cpu``.
    """
    device = local_device(device_type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend=backend)
    # Ignite creates its own process groups (a collective call) the first time a handler requests
    # the rank. Handlers that only rank 0 builds, such as CheckpointSaver, would then wait for
    # the other ranks forever, so every rank sets Ignite up here.
    idist.sync()
    logger.info("Process %d of %d uses %s with backend %s", rank(), world_size(), device, backend)
    return device


def destroy_process_group() -> None:
    """Leave the process group, if any."""
    if is_distributed():
        dist.destroy_process_group()


def wrap_ddp(
    module: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False
) -> DistributedDataParallel:
    """Move ``module`` to ``device`` and wrap it in ``DistributedDataParallel``.

    Gradients are averaged across processes only for computations that run through the
    wrapper's ``forward``, so the wrapped module must compute the whole loss.
    """
    module = module.to(device)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def evaluation_sampler(dataset: Dataset) -> DistributedSampler | None:
    """Split evaluation items across processes (None in a single process).

    Items are not padded to equal counts, so every item is scored exactly once; the
    metric handlers gather the results of all processes.
    """
    if not is_distributed():
        return None
    return DistributedSampler(dataset, even_divisible=False, shuffle=False)


class EpisodeStepSampler(Sampler[int]):
    """Step indices of one training stage for one process.

    Process ``rank`` of ``num_replicas`` draws steps ``start + i * num_replicas + rank`` for
    ``i`` in ``[0, iterations)``, so the processes never draw the same episode and together
    they draw the steps ``[start, start + iterations * num_replicas)``. A single process draws
    ``start, start + 1, ...`` like ``japc train``.

    Args:
        start: first step index of the stage.
        iterations: optimiser steps of this process.
        num_replicas: number of processes; None reads it from the process group.
        rank: this process's rank; None reads it from the process group.
    """

    def __init__(self, start: int, iterations: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.start = int(start)
        self.iterations = int(iterations)
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        if rank is None:
            rank = dist.get_rank() if is_distributed() else 0
        self.rank = int(rank)
        if self.iterations < 0:
            raise ConfigError(f"The number of iterations must be 0 or more, got {iterations}.")
        if not 0 <= self.rank < self.num_replicas:
            raise ConfigError(f"Rank {self.rank} lies outside the {self.num_replicas} processes of the group.")

    def __iter__(self) -> Iterator[int]:
        for i in range(self.iterations):
            yield self.start + i * self.num_replicas + self.rank

    def __len__(self) -> int:
        return self.iterations
