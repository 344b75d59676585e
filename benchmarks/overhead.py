"""Parameter and training-step overhead of JAPC (attention and gate) on each base head.

Targets: at most +0.5 % parameters and +5 % training-step time. Parameters are counted with the
paper's encoder (DeepLabv3-ResNet101 body, 256 channels). A ResNet-101 step takes about 15 s on
a 2-core CPU, so step times are measured with ResNet-18 at 128 x 128 (``--step-encoder``), three
raters, one episode per step, alternating the variants so that machine noise hits all of them.
The weights stay at their seeded start, so every variant does the same work apart from JAPC.
Prints one JSON line per head and calibration.

    python benchmarks/overhead.py [--steps 30] [--step-encoder resnet18] [--size 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import benchmark_config, build_model, emit, machine
from japc.pipeline.training import training_step


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def episode(size: int, raters: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(raters, size, size)
    for r in range(raters):
        masks[r, size // 4 - r : size // 2 + r, size // 4 - r : size // 2 + r] = 1.0
    return {
        "support_image": torch.rand(1, size, size, generator=generator),
        "support_masks": masks,
        "query_image": torch.rand(1, size, size, generator=generator),
        "query_masks": masks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--step-encoder", default="resnet18", help="encoder of the step-time measurement")
    parser.add_argument("--size", type=int, default=128, help="slice size of the step-time measurement")
    args = parser.parse_args()

    for head in ("alpnet", "dspnet"):
        counts = {
            mode: parameter_count(build_model(benchmark_config("deeplabv3_resnet101", head, mode, 256)))
            for mode in ("none", "attention", "gate")
        }
        models = {}
        optimisers = {}
        for mode in ("none", "attention", "gate"):
            model = build_model(benchmark_config(args.step_encoder, head, mode, args.size)).train()
            if mode == "attention":
                torch.nn.init.normal_(model.calibration.value.weight, std=0.01)
            models[mode] = model
            # A learning rate of zero keeps the optimiser's work but freezes the weights. With
            # changing weights the variants drift apart, and the alignment loss skips a rater whose
            # prediction has an empty class, so the step time would follow the predictions.
            optimisers[mode] = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        data = episode(args.size)
        times: dict[str, list[float]] = {mode: [] for mode in models}
        for step in range(args.steps + 2):
            for mode, model in models.items():
                started = time.perf_counter()
                loss = training_step(model, data, (0.05, 1.0)).total
                optimisers[mode].zero_grad()
                loss.backward()
                optimisers[mode].step()
                if step >= 2:
                    times[mode].append(time.perf_counter() - started)
        median = {mode: sorted(values)[len(values) // 2] for mode, values in times.items()}
        for mode in ("attention", "gate"):
            emit(
                {
                    "benchmark": "overhead",
                    "head": head,
                    "calibration": mode,
                    "parameters_base": counts["none"],
                    "parameters_added": counts[mode] - counts["none"],
                    "parameters_added_percent": round(100 * (counts[mode] - counts["none"]) / counts["none"], 3),
                    "step_encoder": args.step_encoder,
                    "step_seconds_base": round(median["none"], 4),
                    "step_seconds": round(median[mode], 4),
                    "step_time_added_percent": round(100 * (median[mode] / median["none"] - 1), 2),
                    "targets_percent": {"parameters": 0.5, "step_time": 5.0},
                    **machine(),
                }
            )


if __name__ == "__main__":
    main()
