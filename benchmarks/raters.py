"""Inference time for R = 7 raters against R = 1 on the same query volume (target: at most 1.15x).

The encoder runs once per slice whatever R is; only prototype pooling, calibration and scoring
repeat per rater. Prints one JSON line.

    python benchmarks/raters.py [--size 128] [--depth 48] [--encoder resnet18]
"""

from __future__ import annotations

import argparse

import torch

from _common import benchmark_config, build_model, emit, machine, median_seconds, synthetic_volume
from japc.pipeline.inference import segment_query
from japc.pipeline.preprocessing import intensity_preprocessing, spatial_transforms
from japc.pipeline.support import encode_support


def support_for(model, config, raters: int):
    """Encode a synthetic support with ``raters`` masks (nested ellipses of growing size)."""
    volume = synthetic_volume((160, 160, 24), seed=1)
    prepared = intensity_preprocessing(config.preprocessing)(spatial_transforms(config.preprocessing, label_key=None)({"image": volume}))["image"]
    image = prepared.as_tensor()
    mask = image[0] > image[0].mean() + image[0].std()
    masks = torch.stack([torch.nn.functional.max_pool3d(mask[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0 for r in range(raters)])
    return encode_support(model, image, masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="network in-plane size in pixels")
    parser.add_argument("--depth", type=int, default=48, help="query slices")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = benchmark_config(encoder=args.encoder, size=args.size)
    model = build_model(config)
    query = synthetic_volume((args.size, args.size, args.depth), seed=2)
    timings = {}
    for raters in (1, 7):
        support = support_for(model, config, raters)
        timings[raters] = median_seconds(lambda: segment_query(model, config, support, query, batch_size=16), args.repeats)
    emit(
        {
            "benchmark": "raters",
            "encoder": args.encoder,
            "size": args.size,
            "slices": args.depth,
            "seconds_r1": round(timings[1], 4),
            "seconds_r7": round(timings[7], 4),
            "ratio_r7_over_r1": round(timings[7] / timings[1], 3),
            "target": 1.15,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
