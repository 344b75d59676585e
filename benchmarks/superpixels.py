"""Preprocessing cache: the first pass computes superpixels, the second reads MONAI's cache.

Target: the second pass over the same data is at least 10x faster than the first. Each pass
runs in a fresh process, as a second training run on the same data would. Uses the
LIDC-IDRI datalist when given, otherwise synthetic volumes. Prints one JSON line.

    python benchmarks/superpixels.py [--datalist data/lidc/datalist.json] [--size 256]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from _common import emit, machine

from japc.pipeline.config import PreprocessingConfig
from japc.pipeline.datalist import load_datalist, write_datalist
from japc.pipeline.preprocessing import cached_training_dataset


def synthetic_datalist(folder: Path, cases: int = 12, shape: tuple[int, int, int] = (256, 256, 40)) -> Path:
    """Write ``cases`` noisy volumes with one rater mask each and return the datalist path."""
    rng = np.random.default_rng(0)
    items = []
    for index in range(cases):
        image = (100 + 20 * rng.standard_normal(shape)).astype(np.float32)
        image[64:192, 64:192] += 80
        label = np.zeros(shape, np.uint8)
        label[96:160, 96:160, 10:30] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"image{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / f"label{index}.nii.gz")
        items.append({"case": f"case{index}", "image": f"image{index}.nii.gz", "label": {"r0": f"label{index}.nii.gz"}})
    return write_datalist(
        {"name": "synthetic", "modality": "MR", "labels": {"0": "background", "1": "target"}, "raters": ["r0"], "training": items},
        folder / "datalist.json",
    )


def preprocess_pass(datalist_path: Path, split: str, size: int, cache: Path) -> tuple[float, int, int]:
    """Preprocess every case of ``split`` through the cache; return seconds, volumes and slices.

    The volumes stay in memory until the pass ends, as training keeps them.
    """
    datalist = load_datalist(datalist_path)
    cases = datalist.cases(split)
    config = PreprocessingConfig(spatial_size=[size, size], intensity={"mode": "zscore"})
    dataset = cached_training_dataset(config, datalist, cases, cache)
    started = time.perf_counter()
    volumes = [dataset[i] for i in range(len(dataset))]
    seconds = time.perf_counter() - started
    return seconds, len(volumes), sum(int(volume["image"].shape[-1]) for volume in volumes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, default=None, help="datalist to preprocess (default: synthetic)")
    parser.add_argument("--split", default="training")
    parser.add_argument("--size", type=int, default=256, help="network in-plane size in pixels")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="japc-superpixels-"))
    try:
        datalist_path = args.datalist or synthetic_datalist(work)
        timings = []
        for _ in range(2):
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                seconds, volumes, slices = pool.submit(preprocess_pass, datalist_path, args.split, args.size, work / "cache").result()
            timings.append(seconds)
        emit(
            {
                "benchmark": "superpixels",
                "data": str(datalist_path) if args.datalist else "synthetic 12 x 256x256x40",
                "volumes": volumes,
                "slices": slices,
                "first_pass_seconds": round(timings[0], 2),
                "second_pass_seconds": round(timings[1], 3),
                "speedup": round(timings[0] / timings[1], 1),
                "target_speedup": 10,
                **machine(),
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
