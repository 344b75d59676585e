"""Helpers shared by the benchmark scripts: synthetic volumes, models, timing and JSON output."""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
from monai.data import MetaTensor

from japc.networks.factory import build_segmenter
from japc.pipeline.config import ModelConfig, PreprocessingConfig, RunConfig

__all__ = ["emit", "machine", "peak_rss_mib", "median_seconds", "synthetic_volume", "benchmark_config", "build_model"]


def emit(record: dict[str, Any]) -> None:
    """Print one benchmark record as a JSON line."""
    print(json.dumps(record), flush=True)


def machine() -> dict[str, Any]:
    """Describe the machine a figure was measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_seconds(function: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``function`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def synthetic_volume(shape: tuple[int, int, int], seed: int = 0) -> MetaTensor:
    """A ``[1, H, W, D]`` volume with a bright ellipsoid on noise, 1 mm voxels."""
    generator = torch.Generator().manual_seed(seed)
    height, width, depth = shape
    rows = torch.arange(height).view(-1, 1, 1).float()
    cols = torch.arange(width).view(1, -1, 1).float()
    slices = torch.arange(depth).view(1, 1, -1).float()
    inside = ((rows - height / 2) / (height / 5)) ** 2 + ((cols - width / 2) / (width / 6)) ** 2 + (
        (slices - depth / 2) / (depth / 3)
    ) ** 2 <= 1
    volume = 100 + 10 * torch.randn(shape, generator=generator) + 80 * inside.float()
    return MetaTensor(volume.unsqueeze(0), affine=torch.eye(4, dtype=torch.float64))


def benchmark_config(
    encoder: str = "resnet18", head: str = "alpnet", calibration: str = "attention", size: int = 128
) -> RunConfig:
    """A run configuration for benchmarks: the given model at ``size`` x ``size`` slices."""
    return RunConfig(
        preprocessing=PreprocessingConfig(spatial_size=[size, size], intensity={"mode": "zscore"}),
        model=ModelConfig(encoder=encoder, head=head, calibration=calibration),
    )


def build_model(config: RunConfig, seed: int = 0) -> torch.nn.Module:
    """Build the configured segmenter with a fixed seed, in evaluation mode."""
    torch.manual_seed(seed)
    return build_segmenter(config.model, pretrained=False).eval()
