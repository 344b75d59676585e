"""Batch inference: outputs on the query's own grid, orientation round trips, input errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from japc.errors import InputImageError
from japc.pipeline.datalist import load_datalist
from japc.pipeline.inference import run_inference
from tests.synthetic import RATERS, synthetic_case


def _support(datalist_path: Path) -> tuple[str, list[str]]:
    case = load_datalist(datalist_path).cases("test")[0]
    return case["image"], [case["label"][r] for r in RATERS]


def _write_query(path: Path, affine: np.ndarray, flip_first_axis: bool = False) -> np.ndarray:
    image, _ = synthetic_case(11, shape=(40, 36, 7))
    if flip_first_axis:
        image = image[::-1].copy()
    nib.save(nib.Nifti1Image(image, affine), path)
    return image


def test_masks_share_query_shape_and_affine(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    affine = np.array([[-0.7, 0.0, 0.0, 30.0], [0.0, -0.9, 0.0, 12.0], [0.0, 0.0, 3.0, -40.0], [0, 0, 0, 1.0]])
    query = tmp_path / "query.nii.gz"
    _write_query(query, affine)
    image, masks = _support(synthetic_datalist)
    records = run_inference(
        trained_checkpoint, image, masks, [query], tmp_path / "out", raters=RATERS, label_value=1
    )
    reference = nib.load(query)
    assert set(records[0]["masks"]) == set(RATERS)
    for rater, path in records[0]["masks"].items():
        output = nib.load(path)
        assert output.shape == reference.shape
        assert np.allclose(output.affine, reference.affine)
        values = np.unique(np.asarray(output.dataobj))
        assert set(values.tolist()) <= {0, 1}
        assert int(np.asarray(output.dataobj).sum()) == records[0]["foreground_voxels"][rater]
    mean = nib.load(records[0]["mean_probability"])
    assert mean.shape == reference.shape
    assert np.allclose(mean.affine, reference.affine)
    data = np.asarray(mean.dataobj)
    assert data.min() >= 0.0 and data.max() <= 1.0
    assert not np.isnan(data).any()


def test_flipped_storage_gives_flipped_masks(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    """The same scan stored with the first axis reversed (LAS instead of RAS) gets the same world masks."""
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    las = ras.copy()
    las[0, 0] = -0.8
    las[0, 3] = 0.8 * 39  # voxel 39 of the flipped file sits where voxel 0 of the original does
    _write_query(tmp_path / "ras.nii.gz", ras)
    _write_query(tmp_path / "las.nii.gz", las, flip_first_axis=True)
    image, masks = _support(synthetic_datalist)
    records = run_inference(
        trained_checkpoint, image, masks, [tmp_path / "ras.nii.gz", tmp_path / "las.nii.gz"], tmp_path / "out", label_value=1
    )
    for rater in records[0]["masks"]:
        first = np.asarray(nib.load(records[0]["masks"][rater]).dataobj)
        second = np.asarray(nib.load(records[1]["masks"][rater]).dataobj)
        assert np.array_equal(first, second[::-1])


def test_png_query_gives_2d_masks(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    slice_image = synthetic_case(3, shape=(30, 34, 8))[0][..., 4]
    scaled = (255 * (slice_image - slice_image.min()) / np.ptp(slice_image)).astype(np.uint8)
    Image.fromarray(scaled).save(tmp_path / "slice.png")
    image, masks = _support(synthetic_datalist)
    records = run_inference(trained_checkpoint, image, masks, [tmp_path], tmp_path / "out", label_value=1)
    assert len(records) == 1
    output = nib.load(records[0]["masks"]["rater-0"])
    # MONAI's PNG reader puts columns first: a 30 x 34 (rows x columns) PNG loads as 34 x 30
    assert output.shape == (34, 30)


def test_overlays_are_written(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    query = tmp_path / "query.nii.gz"
    _write_query(query, np.eye(4))
    image, masks = _support(synthetic_datalist)
    records = run_inference(trained_checkpoint, image, masks, [query], tmp_path / "out", overlays=True, label_value=1)
    overlays = [Path(p) for p in records[0]["overlays"]]
    assert 1 <= len(overlays) <= 4
    for path in overlays:
        with Image.open(path) as picture:
            assert picture.size[0] > 100


def test_class_absent_from_support_masks(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    image, masks = _support(synthetic_datalist)
    with pytest.raises(InputImageError, match="value 7"):
        run_inference(trained_checkpoint, image, masks, [image], tmp_path / "out", label_value=7)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))


def test_rater_ids_must_match_masks(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    image, masks = _support(synthetic_datalist)
    with pytest.raises(InputImageError, match="3 support masks were given for 2 rater ids"):
        run_inference(trained_checkpoint, image, masks, [image], tmp_path / "out", raters=["a", "b"])


def test_missing_query_is_reported(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    image, masks = _support(synthetic_datalist)
    with pytest.raises(InputImageError, match="nowhere.nii.gz"):
        run_inference(trained_checkpoint, image, masks, [tmp_path / "nowhere.nii.gz"], tmp_path / "out")


def test_infer_on_imported_lidc_nodule(lidc_root: Path, trained_checkpoint: Path, tmp_path: Path) -> None:
    """Four rater masks on the grid of an imported LIDC nodule."""
    import shutil

    from japc.pipeline.importers import import_lidc

    source = tmp_path / "source"
    for subject in ("LIDC-IDRI-0001", "LIDC-IDRI-0003"):
        shutil.copytree(lidc_root / subject, source / subject)
    datalist = load_datalist(import_lidc(source, tmp_path / "data", progress=False))
    cases = datalist.cases("training")
    support, query = cases[0], cases[-1]
    records = run_inference(
        trained_checkpoint,
        support["image"],
        [support["label"][r] for r in datalist.raters],
        [query["image"]],
        tmp_path / "out",
        raters=datalist.raters,
    )
    reference = nib.load(query["image"])
    assert sorted(records[0]["masks"]) == ["rater-0", "rater-1", "rater-2", "rater-3"]
    for path in records[0]["masks"].values():
        output = nib.load(path)
        assert output.shape == reference.shape
        assert np.array_equal(output.affine, reference.affine)


def test_outputs_are_readable_by_others(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    import os
    import stat

    image, masks = _support(synthetic_datalist)
    records = run_inference(trained_checkpoint, image, masks, [image], tmp_path / "out", label_value=1)
    umask = os.umask(0)
    os.umask(umask)
    for path in [*records[0]["masks"].values(), records[0]["mean_probability"]]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
