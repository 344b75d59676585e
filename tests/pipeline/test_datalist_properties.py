"""Property-based checks: whatever datalist and masks a user writes, failures are japc's own errors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from japc.errors import JapcError
from japc.pipeline.datalist import check_case, load_datalist

SHAPES = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4))
VALUES = st.lists(st.integers(0, 4), min_size=1, max_size=3)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.text(max_size=6))


@st.composite
def case_files(draw):
    """An image shape, per-rater label shapes and values, and optional corruptions."""
    image_shape = draw(SHAPES)
    raters = draw(st.integers(1, 3))
    label_shapes = [draw(st.one_of(st.just(image_shape), SHAPES)) for _ in range(raters)]
    label_values = [draw(VALUES) for _ in range(raters)]
    return {
        "image_shape": image_shape,
        "label_shapes": label_shapes,
        "label_values": label_values,
        "image_nan": draw(st.booleans()),
        "affine_shift": draw(st.sampled_from([0.0, 0.0005, 0.5])),
        "truncate_image": draw(st.booleans()),
        "drop_rater": draw(st.booleans()),
        "declared": draw(st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True)),
    }


def _write_case(folder: Path, spec: dict) -> dict:
    image = np.random.default_rng(0).random(spec["image_shape"]).astype(np.float32)
    if spec["image_nan"]:
        image.flat[0] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "image.nii.gz")
    if spec["truncate_image"]:
        data = (folder / "image.nii.gz").read_bytes()
        (folder / "image.nii.gz").write_bytes(data[: max(1, len(data) // 2)])
    labels = {}
    for index, (shape, values) in enumerate(zip(spec["label_shapes"], spec["label_values"])):
        label = np.resize(np.array(values, np.uint8), shape)
        affine = np.eye(4)
        affine[0, 3] = spec["affine_shift"] * index
        nib.save(nib.Nifti1Image(label, affine), folder / f"label{index}.nii.gz")
        labels[f"r{index}"] = f"label{index}.nii.gz"
    raters = list(labels)
    if spec["drop_rater"] and len(labels) > 1:
        labels.pop(raters[-1])
    return {
        "name": "generated",
        "modality": "MR",
        "labels": {"0": "background", **{str(v): f"class{v}" for v in spec["declared"]}},
        "raters": raters,
        "training": [{"case": "case0", "image": "image.nii.gz", "label": labels}],
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=case_files())
def test_loader_failures_are_japc_errors(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "datalist.json").write_text(json.dumps(_write_case(folder, spec)))
        try:
            datalist = load_datalist(folder / "datalist.json")
            loaded = check_case(datalist.cases("training")[0], datalist)
        except JapcError as error:
            assert "case0" in str(error) or "datalist.json" in str(error)
            return
        # a case that loads must be consistent
        assert loaded["image"].shape[1:] == loaded["label"].shape[1:]
        assert loaded["label"].shape[0] == len(datalist.raters)
        assert not np.isnan(np.asarray(loaded["image"])).any()


@settings(max_examples=60, deadline=None)
@given(
    content=st.recursive(
        st.dictionaries(st.sampled_from(["name", "labels", "raters", "training", "case", "image", "label"]), JSON_SCALARS, max_size=5),
        lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.sampled_from(["labels", "raters", "training", "label"]), children, max_size=3)),
        max_leaves=8,
    )
)
def test_malformed_datalist_json_gives_datalist_error(content: object) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "datalist.json"
        path.write_text(json.dumps(content))
        try:
            load_datalist(path)
        except JapcError as error:
            assert "datalist.json" in str(error)
