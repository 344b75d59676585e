"""Training throughput: share of each step spent waiting for data, and episodes per second.

Target: data waiting under 10 % of the step time (episodes are prepared by data-loader workers
while the model computes). Measures the same training loop with 0 and 1 worker. Uses the given
datalist or synthetic volumes. Prints one JSON line per worker count.

    python benchmarks/training.py [--datalist data/lidc/datalist.json] [--steps 60] [--size 128]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from _common import emit, machine
from superpixels import synthetic_datalist

from japc.pipeline.config import DataConfig, ModelConfig, PreprocessingConfig, RunConfig, TrainingConfig
from japc.pipeline.training import EpisodeDataset, EpisodicTrainer, training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, default=None, help="training datalist (default: synthetic)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per worker count")
    parser.add_argument("--size", type=int, default=128, help="network in-plane size in pixels")
    parser.add_argument("--raters", type=int, default=3, help="pseudo-style raters per episode")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="japc-training-"))
    try:
        datalist = args.datalist or synthetic_datalist(work, cases=6)
        config = RunConfig(
            data=DataConfig(datalist=str(datalist)),
            preprocessing=PreprocessingConfig(spatial_size=[args.size, args.size], intensity={"mode": "zscore"}),
            model=ModelConfig(encoder="resnet18", calibration="attention"),
            training=TrainingConfig(device="cpu"),
            output_dir=str(work / "run"),
        )
        trainer = EpisodicTrainer(config)
        volumes = trainer.load_volumes()
        model = trainer.model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        for workers in (0, 1):
            dataset = EpisodeDataset(volumes, args.raters, pseudo_styles=True, seed=0)
            loader = DataLoader(dataset, batch_size=None, sampler=range(args.steps + 3), num_workers=workers)
            waits, steps = [], []
            iterator = iter(loader)
            for step in range(args.steps + 3):
                started = time.perf_counter()
                episode = next(iterator)
                fetched = time.perf_counter()
                loss = training_step(model, episode, (0.05, 1.0)).total
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                finished = time.perf_counter()
                if step >= 3:  # skip worker start-up
                    waits.append(fetched - started)
                    steps.append(finished - started)
            emit(
                {
                    "benchmark": "training",
                    "data": str(datalist) if args.datalist else "synthetic 6 x 256x256x40",
                    "workers": workers,
                    "size": args.size,
                    "raters": args.raters,
                    "steps": args.steps,
                    "episodes_per_second": round(len(steps) / sum(steps), 2),
                    "data_wait_share_percent": round(100 * sum(waits) / sum(steps), 2),
                    "target_wait_percent": 10,
                    **machine(),
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
