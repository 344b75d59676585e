"""Bundle inference (inference.json): one mask per rater on the query's grid, equal to japc infer."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from japc.pipeline.datalist import load_datalist
from japc.pipeline.importers import import_lidc
from japc.pipeline.inference import run_inference
from tests.bundle.commands import run_bundle
from tests.synthetic import RATERS, synthetic_case


def _infer(
    checkpoint: Path, support_image: str, support_masks: list[str], raters: list[str], queries: Path, output: Path
) -> None:
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--bundle_root",
        str(output.parent),
        "--ckpt_path",
        str(checkpoint),
        "--dataset_dir",
        str(queries),
        "--output_dir",
        str(output),
        "--support_image",
        support_image,
        "--support_masks",
        repr(support_masks),
        "--raters",
        repr(raters),
        "--label_value",
        "1",
    )


def _assert_same_masks(bundle_output: Path, records: list[dict], raters: list[str]) -> None:
    """Every rater mask of japc infer exists in the bundle's output with the same voxels and affine."""
    for record in records:
        query = nib.load(record["query"])
        for rater in raters:
            expected = nib.load(record["masks"][rater])
            written = nib.load(
                bundle_output / Path(record["masks"][rater]).parent.name / Path(record["masks"][rater]).name
            )
            assert written.shape == query.shape
            assert np.allclose(written.affine, query.affine)
            data = np.asarray(written.dataobj)
            assert set(np.unique(data).tolist()) <= {0, 1}
            assert np.array_equal(data, np.asarray(expected.dataobj)), f"{record['query']}, rater {rater}"
        mean = nib.load(
            bundle_output / Path(record["mean_probability"]).parent.name / Path(record["mean_probability"]).name
        )
        assert np.allclose(mean.affine, query.affine)
        assert np.allclose(
            np.asarray(mean.dataobj), np.asarray(nib.load(record["mean_probability"]).dataobj), atol=1e-6
        )


def test_masks_on_query_grid(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    """A query stored with flipped, anisotropic axes gets masks with its shape and affine, as japc infer writes them."""
    queries = tmp_path / "queries"
    queries.mkdir()
    affine = np.array([[-0.7, 0.0, 0.0, 30.0], [0.0, -0.9, 0.0, 12.0], [0.0, 0.0, 3.0, -40.0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(synthetic_case(11, shape=(40, 36, 7))[0], affine), queries / "query.nii.gz")
    support = load_datalist(synthetic_datalist).cases("test")[0]
    masks = [support["label"][rater] for rater in RATERS]
    output = tmp_path / "bundle" / "masks"
    _infer(trained_checkpoint, support["image"], masks, RATERS, queries, output)

    assert sorted(p.name for p in (output / "query").iterdir()) == sorted(
        [f"query_{rater}.nii.gz" for rater in RATERS] + ["query_mean_probability.nii.gz"]
    )
    records = run_inference(
        trained_checkpoint,
        support["image"],
        masks,
        [queries],
        tmp_path / "japc",
        raters=RATERS,
        label_value=1,
        device="cpu",
    )
    _assert_same_masks(output, records, RATERS)
    # The support's class (the bright blob) is found in the query by at least one rater.
    assert any(count > 0 for count in records[0]["foreground_voxels"].values())


def test_lidc_nodule_equals_japc_infer(lidc_root: Path, trained_checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "slices"
    for patient in ("LIDC-IDRI-0001", "LIDC-IDRI-0002"):
        shutil.copytree(lidc_root / patient, source / patient)
    datalist = load_datalist(import_lidc(source, tmp_path / "lidc", progress=False))
    cases = {case["case"]: case for case in datalist.cases("training")}
    support = cases["LIDC-IDRI-0001_nodule-0"]
    masks = [support["label"][rater] for rater in datalist.raters]
    queries = tmp_path / "queries"
    queries.mkdir()
    for case_id, case in cases.items():
        if case["subject"] == "LIDC-IDRI-0002":
            shutil.copy(case["image"], queries / f"{case_id}.nii.gz")
    output = tmp_path / "bundle" / "masks"
    _infer(trained_checkpoint, support["image"], masks, datalist.raters, queries, output)

    records = run_inference(
        trained_checkpoint,
        support["image"],
        masks,
        [queries],
        tmp_path / "japc",
        raters=datalist.raters,
        label_value=1,
        device="cpu",
    )
    assert records
    assert len(list(output.iterdir())) == len(records)
    _assert_same_masks(output, records, datalist.raters)
