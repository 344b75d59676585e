"""``japc demo``: the whole road (datalist, training, evaluation, inference) on offline data.

The data are MRI brain templates with atlas delineations as raters (see
:mod:`japc.pipeline.demo_data`). The training budget fits a 2-core CPU in a few minutes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from japc.pipeline.config import DataConfig, ModelConfig, PreprocessingConfig, RunConfig, TrainingConfig
from japc.pipeline.datalist import load_datalist
from japc.pipeline.demo_data import DEMO_CLASSES, build_demo_datalist, format_licences
from japc.pipeline.evaluation import EvaluationSettings, evaluate, format_summary
from japc.pipeline.files import atomic_write_text, ensure_writable_folder
from japc.pipeline.inference import run_inference
from japc.pipeline.training import train

__all__ = ["DEMO_ITERATIONS", "default_cache_dir", "demo_config", "run_demo"]

logger = logging.getLogger(__name__)

#: Training episodes of the demo: about 4 minutes on 2 CPU cores with ResNet-18 at 128 x 128.
DEMO_ITERATIONS = 1000

DISCLAIMER = (
    "NOTE: the demo templates share one standard space (MNI), so an atlas outlines nearly the same "
    "voxels on each template. This Dice shows that the pipeline runs end to end on real images and "
    "real expert protocols; it is not an accuracy benchmark."
)


def default_cache_dir() -> Path:
    """Return ``$JAPC_CACHE_DIR`` or ``~/.cache/japc``."""
    return Path(os.environ.get("JAPC_CACHE_DIR", Path.home() / ".cache" / "japc"))


def demo_config(datalist: Path, output_dir: Path, iterations: int = DEMO_ITERATIONS) -> RunConfig:
    """Configuration of the demo run: ResNet-18 at output stride 8, JAPC attention, two stages."""
    return RunConfig(
        data=DataConfig(datalist=str(datalist), split="training"),
        preprocessing=PreprocessingConfig(
            intensity={"mode": "mr_percentile", "upper": 99.5},
            spatial_size=[128, 128],
            body_mask_threshold=-0.5,
            superpixel_min_size=100,
        ),
        model=ModelConfig(encoder="resnet18", output_stride=8, calibration="attention"),
        training=TrainingConfig(
            iterations=iterations,
            stage1_iterations=iterations // 2,
            num_raters=4,
            checkpoint_every=max(1, iterations // 4),
            log_every=max(1, iterations // 20),
            lr_step=max(1, iterations // 4),
        ),
        output_dir=str(output_dir / "training"),
    )


def run_demo(
    cache_dir: Path | None = None,
    output_dir: Path = Path("runs/demo"),
    iterations: int | None = None,
    echo: Callable[[str], None] = logger.info,
) -> dict:
    """Build the demo data, train, evaluate and segment one template; report where the results are.

    Args:
        cache_dir: folder of the demo datalist (default :func:`default_cache_dir`).
        output_dir: folder of the checkpoints, Dice tables and masks.
        iterations: training episodes (default ``DEMO_ITERATIONS``).
        echo: receives the licence text first and the final report last, one block per call
            (the command line passes ``print``).

    Returns:
        ``{"datalist", "checkpoint", "summary", "inference"}``.
    """
    started = time.perf_counter()
    output_dir = ensure_writable_folder(Path(output_dir).absolute())
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    echo(format_licences() + "\n")
    datalist_path = build_demo_datalist(cache_dir)
    datalist = load_datalist(datalist_path)
    echo(f"Demo datalist: {datalist_path} ({len(datalist.cases('test'))} templates, raters {', '.join(datalist.raters)})")

    config = demo_config(datalist_path, output_dir, iterations or DEMO_ITERATIONS)
    atomic_write_text(output_dir / "demo_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    checkpoint = train(config)

    settings = EvaluationSettings(supports="first")
    summary = evaluate(checkpoint, datalist_path, "test", output_dir / "evaluation", settings)

    support, query = datalist.cases("test")[0], datalist.cases("test")[1]
    inference = run_inference(
        checkpoint,
        support["image"],
        [support["label"][rater] for rater in datalist.raters],
        [query["image"]],
        output_dir / "inference",
        raters=list(datalist.raters),
        label_value=DEMO_CLASSES["thalamus"],
        overlays=True,
    )

    minutes = (time.perf_counter() - started) / 60
    record = inference[0]
    lines = [
        "",
        f"Per-rater Dice (support {support['case']}, queries: the other templates), in %:",
        format_summary(summary),
        "",
        DISCLAIMER,
        "",
        f"Checkpoint:            {checkpoint}",
        f"Dice table per case:   {output_dir / 'evaluation' / 'dice_per_case.csv'}",
        f"Dice summary:          {output_dir / 'evaluation' / 'summary.json'}",
        f"Thalamus masks of {query['case']} (one per rater), on the query's grid:",
    ]
    lines += [f"  {rater:<20} {path}" for rater, path in record["masks"].items()]
    lines.append(f"  {'mean probability':<20} {record['mean_probability']}")
    lines += [f"  overlay              {path}" for path in record["overlays"]]
    lines.append(f"Demo finished in {minutes:.1f} min.")
    echo("\n".join(lines))
    return {"datalist": datalist_path, "checkpoint": checkpoint, "summary": summary, "inference": inference}
