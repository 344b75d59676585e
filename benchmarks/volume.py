"""Streaming inference on a large volume: peak memory, slices per second, achieved GFLOP/s.

Segments a 512 x 512 x 300 volume for 3 raters with a small encoder on the CPU, in slice batches.
Target: peak memory under 3 GiB. The achieved GFLOP/s (encoder FLOPs counted with
``torch.utils.flop_counter``) is compared with the dense float32 matrix-multiply GFLOP/s measured
in the same run, and one encoder batch is timed in the contiguous and the channels-last memory
format to show whether channels-last pays on this machine. Prints one JSON line.

    python benchmarks/volume.py [--shape 512 512 300] [--size 256] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import benchmark_config, build_model, emit, machine, median_seconds, peak_rss_mib, synthetic_volume
from raters import support_for

from japc.pipeline.inference import segment_query


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Dense float32 matrix multiplication throughput of this machine, in GFLOP/s (best of runs)."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def encoder_batch_seconds(model: torch.nn.Module, size: int, batch_size: int, channels_last: bool) -> float:
    """Median time of one encoder batch ``[B, 1, size, size]`` in the given memory format."""
    images = torch.randn(batch_size, 1, size, size)
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return median_seconds(lambda: model.encode(images), repeats=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="volume size H W D in voxels")
    parser.add_argument("--size", type=int, default=256, help="network in-plane size in pixels")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per encoder batch")
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args()

    config = benchmark_config(encoder=args.encoder, size=args.size)
    model = build_model(config)
    support = support_for(model, config, raters=3)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.encode(torch.zeros(1, 1, args.size, args.size))
    flops_per_slice = counter.get_total_flops()

    baseline = peak_rss_mib()
    volume = synthetic_volume(tuple(args.shape), seed=3)
    started = time.perf_counter()
    probabilities = segment_query(model, config, support, volume, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    slices = args.shape[2]
    achieved = flops_per_slice * slices / seconds / 1e9
    reference = matmul_gflops()
    contiguous = encoder_batch_seconds(model, args.size, args.batch_size, channels_last=False)
    channels_last = encoder_batch_seconds(model, args.size, args.batch_size, channels_last=True)
    emit(
        {
            "benchmark": "volume",
            "shape": args.shape,
            "raters": int(probabilities.shape[0]),
            "network_size": args.size,
            "encoder": args.encoder,
            "batch_size": args.batch_size,
            "seconds": round(seconds, 2),
            "slices_per_second": round(slices / seconds, 2),
            "peak_rss_mib": round(peak, 1),
            "rss_before_volume_mib": round(baseline, 1),
            "target_peak_mib": 3072,
            "encoder_gflop_per_slice": round(flops_per_slice / 1e9, 3),
            "achieved_gflops": round(achieved, 2),
            "matmul_gflops": round(reference, 2),
            "achieved_over_matmul": round(achieved / reference, 3),
            "encoder_batch_seconds_contiguous": round(contiguous, 4),
            "encoder_batch_seconds_channels_last": round(channels_last, 4),
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
