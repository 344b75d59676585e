"""Tiny synthetic multi-rater datasets written as NIfTI files with a datalist, for pipeline tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from japc.pipeline.config import DataConfig, ModelConfig, PreprocessingConfig, RunConfig, TrainingConfig
from japc.pipeline.datalist import write_datalist

RATERS = ["tight", "middle", "loose"]
CLASSES = {"blob": 1, "bar": 2}


def synthetic_case(seed: int, shape: tuple[int, int, int] = (32, 32, 8)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return an image and three rater label maps: a bright ellipsoid (class 1) and a bar (class 2).

    Rater ``tight`` draws the eroded blob, ``middle`` the blob, ``loose`` the dilated blob; all
    three draw the same bar. Slices 0 and D-1 hold no structure.
    """
    rng = np.random.default_rng(seed)
    height, width, depth = shape
    rows, cols, slices = np.meshgrid(np.arange(height), np.arange(width), np.arange(depth), indexing="ij")
    centre = (height / 2 + rng.integers(-3, 4), width / 2 + rng.integers(-3, 4), depth / 2)
    blob = ((rows - centre[0]) / 7.0) ** 2 + ((cols - centre[1]) / 6.0) ** 2 + ((slices - centre[2]) / 2.6) ** 2 <= 1.0
    bar = (rows >= 3) & (rows < 7) & (cols >= 4) & (cols < 28) & (slices >= 2) & (slices < depth - 2)
    image = 100.0 + 5.0 * rng.standard_normal(shape)
    image[blob] += 120.0
    image[bar] += 60.0
    structure = ndimage.generate_binary_structure(3, 1)
    structure[:, :, 0] = structure[:, :, 2] = False  # in-plane only
    styles = [ndimage.binary_erosion(blob, structure), blob, ndimage.binary_dilation(blob, structure)]
    labels = []
    for style in styles:
        label = np.zeros(shape, np.uint8)
        label[bar] = CLASSES["bar"]
        label[style & ~bar] = CLASSES["blob"]
        labels.append(label)
    return image.astype(np.float32), labels


def write_synthetic_dataset(
    folder: Path,
    num_cases: int = 4,
    shape: tuple[int, int, int] = (32, 32, 8),
    affine: np.ndarray | None = None,
    test_cases: int = 3,
) -> Path:
    """Write ``num_cases`` synthetic cases and a datalist; the last ``test_cases`` form split ``test``.

    Returns:
        The datalist path.
    """
    affine = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    cases = []
    for index in range(num_cases):
        image, labels = synthetic_case(index, shape)
        case_id = f"case{index:02d}"
        image_path = folder / "images" / f"{case_id}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), image_path)
        label_paths = {}
        for rater, label in zip(RATERS, labels):
            path = folder / "labels" / f"{case_id}_{rater}.nii.gz"
            nib.save(nib.Nifti1Image(label, affine), path)
            label_paths[rater] = str(path)
        cases.append({"case": case_id, "subject": case_id, "image": str(image_path), "label": label_paths})
    datalist = {
        "name": "synthetic",
        "modality": "MR",
        "labels": {"0": "background", **{str(v): k for k, v in CLASSES.items()}},
        "raters": RATERS,
        "training": cases[: num_cases - test_cases] or cases,
        "test": cases[num_cases - test_cases :],
    }
    return write_datalist(datalist, folder / "datalist.json")


def tiny_config(datalist: Path, output_dir: Path, calibration: str = "attention", iterations: int = 6) -> RunConfig:
    """A configuration that trains in seconds: ResNet-18 at output stride 8 on 32 x 32 slices."""
    return RunConfig(
        data=DataConfig(datalist=str(datalist), split="training"),
        preprocessing=PreprocessingConfig(
            intensity={"mode": "zscore"}, spatial_size=[32, 32], superpixel_min_size=20
        ),
        model=ModelConfig(
            encoder="resnet18", output_stride=8, feature_channels=32, calibration=calibration, attention_dim=8, mask_resize="area"
        ),
        training=TrainingConfig(
            iterations=iterations,
            stage1_iterations=iterations // 2,
            num_raters=3,
            checkpoint_every=2,
            log_every=2,
            lr_step=4,
            seed=7,
        ),
        output_dir=str(output_dir),
    )
