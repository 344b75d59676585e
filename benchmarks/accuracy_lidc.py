"""Accuracy benchmark on the LIDC-IDRI nodule slices: base network versus JAPC gate and attention.

Trains the base network (calibration ``none``), JAPC ``gate`` and JAPC ``attention`` with the
same CPU budget for each of three seeds on the nodules of patients 0001-0080. Each run is
evaluated with every test nodule (patients 0081-0120) used in turn as the support. The script
prints one JSON line per variant with Dice_m per seed and averaged over seeds. For the JAPC
variants the line adds a one-tailed paired t-test against the base over the supports, on the
per-support Dice_m averaged over seeds.

Usage (about 50 minutes on 2 CPU cores with the defaults):

    python benchmarks/accuracy_lidc.py --lidc ../shared/data/lidc-idri-slices --work runs/accuracy-lidc
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from japc.pipeline.config import load_config
from japc.pipeline.evaluation import EvaluationSettings, evaluate
from japc.pipeline.importers import import_lidc
from japc.pipeline.report import load_run
from japc.pipeline.training import train

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "gate", "attention")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc", type=Path, default=REPO.parent / "shared" / "data" / "lidc-idri-slices", help="LIDC-IDRI slices folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "accuracy-lidc", help="folder for data, runs and tables")
    parser.add_argument("--iterations", type=int, default=1000, help="training episodes per run (same for every variant)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lidc.yaml", help="base configuration")
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    datalist = args.work / "data" / "datalist.json"
    if not datalist.is_file():
        import_lidc(
            args.lidc,
            args.work / "data",
            splits={"training": ("LIDC-IDRI-0001", "LIDC-IDRI-0080"), "test": ("LIDC-IDRI-0081", "LIDC-IDRI-0120")},
            progress=False,
        )

    per_support: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    dice_by_seed: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    seconds: dict[str, float] = {variant: 0.0 for variant in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            run = args.work / f"{variant}-seed{seed}"
            overrides = [
                f"data.datalist={datalist}",
                f"output_dir={run}",
                f"model.calibration={variant}",
                f"training.iterations={args.iterations}",
                f"training.seed={seed}",
                f"training.checkpoint_every={args.iterations}",
            ]
            tick = time.perf_counter()
            checkpoint = run / "checkpoints" / "final.pt"
            if not checkpoint.is_file():
                checkpoint = train(load_config(args.config, overrides))
            if not (run / "evaluation" / "dice_per_case.csv").is_file():
                evaluate(checkpoint, datalist, "test", run / "evaluation", EvaluationSettings(supports="all"))
            seconds[variant] += time.perf_counter() - tick
            summary = load_run(run / "evaluation").summary
            per_support[variant].append(summary["per_support"])
            dice_by_seed[variant].append(summary["dice_mean"])

    supports = sorted(set.intersection(*(set(s) for runs in per_support.values() for s in runs)))
    averaged = {
        variant: np.array([np.mean([runs[s] for runs in per_support[variant]]) for s in supports]) for variant in VARIANTS
    }
    for variant in VARIANTS:
        record = {
            "benchmark": "accuracy_lidc",
            "variant": variant,
            "iterations": args.iterations,
            "seeds": args.seeds,
            "dice_m": round(100 * float(np.mean(dice_by_seed[variant])), 2),
            "dice_m_per_seed": [round(100 * d, 2) for d in dice_by_seed[variant]],
            "supports": len(supports),
            "seconds": round(seconds[variant], 1),
        }
        if variant != "none":
            difference = averaged[variant] - averaged["none"]
            test = stats.ttest_rel(averaged[variant], averaged["none"], alternative="greater")
            record.update(
                vs_base_mean_difference=round(100 * float(difference.mean()), 2),
                vs_base_t=round(float(test.statistic), 3),
                vs_base_p=float(f"{test.pvalue:.4g}"),
                vs_base_n=len(supports),
            )
        print(json.dumps(record))
    print(json.dumps({"benchmark": "accuracy_lidc", "total_seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
