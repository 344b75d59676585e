"""Per-rater segmentation service behind the MONAI Label app, on synthetic data (no monailabel needed)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import japc.label.service as service_module
from japc.errors import CheckpointError, ConfigError, DatalistError, InputImageError
from japc.label import (
    CONSENSUS,
    LabelServiceError,
    LabelSettings,
    RaterSegmentationService,
    disagreement_fraction,
    http_status,
    load_service,
    rater_probability,
)
from japc.pipeline.checkpoints import load_model
from japc.pipeline.datalist import load_datalist
from japc.pipeline.inference import load_query, prepare_support, segment_query
from tests.synthetic import RATERS

SUPPORT_CASE = "case01"
QUERY_CASE = "case02"
BLOB = 1


def test_rater_probability_selects_and_averages() -> None:
    probabilities = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=torch.float16)
    assert torch.allclose(rater_probability(probabilities, ["a", "b"], "b"), torch.tensor([0.6, 0.4]), atol=1e-3)
    assert torch.allclose(rater_probability(probabilities, ["a", "b"], CONSENSUS), torch.tensor([0.4, 0.6]), atol=1e-3)
    assert rater_probability(probabilities, ["a", "b"], "a").dtype == torch.float32


def test_disagreement_fraction_hand_example() -> None:
    masks = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    # Union: voxels 0, 1, 2. All raters agree only on voxel 0, so 2 of 3 are disputed.
    assert disagreement_fraction(masks) == pytest.approx(2 / 3)


def test_disagreement_fraction_edge_cases() -> None:
    assert disagreement_fraction(torch.zeros((3, 4, 4), dtype=torch.bool)) is None
    identical = torch.zeros((2, 4, 4), dtype=torch.bool)
    identical[:, 1:3, 1:3] = True
    assert disagreement_fraction(identical) == 0.0
    disjoint = torch.zeros((2, 4), dtype=torch.bool)
    disjoint[0, 0] = disjoint[1, 3] = True
    assert disagreement_fraction(disjoint) == 1.0


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigError("bad rater"), 400),
        (InputImageError("unreadable"), 422),
        (DatalistError("two channels"), 422),
        (LabelServiceError("no support"), 503),
        (CheckpointError("corrupt"), 503),
        (ValueError("bug"), 500),
    ],
)
def test_http_status_per_error(error: Exception, status: int) -> None:
    assert http_status(error) == status


def test_http_status_follows_cause_chain() -> None:
    wrapped = RuntimeError("applying transform failed")
    wrapped.__cause__ = InputImageError("unreadable")
    assert http_status(wrapped) == 422


@pytest.fixture(scope="module")
def settings(trained_checkpoint: Path, synthetic_datalist: Path) -> LabelSettings:
    return LabelSettings(
        checkpoint=trained_checkpoint, datalist=synthetic_datalist, support_case=SUPPORT_CASE, label_value=BLOB, device="cpu"
    )


@pytest.fixture(scope="module")
def service(settings: LabelSettings) -> RaterSegmentationService:
    return RaterSegmentationService.from_settings(settings)


@pytest.fixture(scope="module")
def query_path(synthetic_datalist: Path) -> Path:
    return Path(load_datalist(synthetic_datalist).case(QUERY_CASE)["image"])


@pytest.fixture(scope="module")
def reference_probabilities(trained_checkpoint: Path, synthetic_datalist: Path, query_path: Path) -> np.ndarray:
    """``[R, H, W, D]`` probabilities from japc's own inference functions, without the service."""
    model, config, _ = load_model(trained_checkpoint, "cpu")
    case = load_datalist(synthetic_datalist).case(SUPPORT_CASE)
    masks = [case["label"][rater] for rater in RATERS]
    support, _ = prepare_support(model, config, case["image"], masks, RATERS, label_value=BLOB)
    image, _ = load_query(query_path)
    return segment_query(model, config, support, image).as_tensor().float().numpy()


def test_service_reads_support_case(service: RaterSegmentationService) -> None:
    assert service.raters == RATERS
    assert service.class_name == "blob"
    assert service.support_case == SUPPORT_CASE
    assert service.support.masks[0].shape[1] == len(RATERS)


@pytest.mark.parametrize("rater", ["tight", "loose", CONSENSUS])
def test_service_label_matches_reference(
    service: RaterSegmentationService, query_path: Path, reference_probabilities: np.ndarray, rater: str
) -> None:
    threshold = 0.5
    segmentation = service.segment(query_path, image_id=QUERY_CASE, rater=rater, threshold=threshold)

    query = nib.load(query_path)
    label = segmentation.label.as_tensor().numpy()
    assert label.shape == query.shape
    assert label.dtype == np.uint8
    np.testing.assert_allclose(segmentation.label.affine.numpy(), query.affine, atol=1e-5)

    if rater == CONSENSUS:
        probability = reference_probabilities.mean(axis=0)
    else:
        probability = reference_probabilities[RATERS.index(rater)]
    np.testing.assert_array_equal(label, (probability > threshold).astype(np.uint8))

    masks = reference_probabilities > threshold
    union = masks.any(axis=0)
    result = segmentation.result()
    assert result["raters"] == RATERS
    assert result["rater"] == rater
    assert result["class"] == "blob"
    assert result["foreground_voxels"] == int(label.sum())
    assert result["rater_foreground_voxels"] == {name: int(masks[r].sum()) for r, name in enumerate(RATERS)}
    expected_fraction = (union & ~masks.all(axis=0)).sum() / union.sum() if union.any() else None
    assert result["disagreement_fraction"] == pytest.approx(expected_fraction)


def test_service_default_rater_is_consensus(service: RaterSegmentationService, query_path: Path) -> None:
    default = service.segment(query_path)
    consensus = service.segment(query_path, rater=CONSENSUS)
    assert default.rater == CONSENSUS
    assert torch.equal(default.label, consensus.label)


def test_service_threshold_orders_foreground(service: RaterSegmentationService, query_path: Path) -> None:
    low = service.segment(query_path, rater="middle", threshold=0.2).label
    high = service.segment(query_path, rater="middle", threshold=0.8).label
    # A voxel above the higher threshold is above the lower one too.
    assert bool((high <= low).all())


def test_service_reuses_probabilities_of_same_file(
    service: RaterSegmentationService, tmp_path: Path, query_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = service_module.segment_query

    def counting_segment_query(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(service_module, "segment_query", counting_segment_query)
    copy = tmp_path / "query.nii.gz"
    copy.write_bytes(query_path.read_bytes())
    service.segment(copy, rater="tight")
    service.segment(copy, rater="loose", threshold=0.3)
    assert len(calls) == 1
    status = copy.stat()
    os.utime(copy, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    service.segment(copy, rater="tight")
    assert len(calls) == 2


def test_service_two_dimensional_image(service: RaterSegmentationService, tmp_path: Path, query_path: Path) -> None:
    query = nib.load(query_path)
    middle_slice = np.asarray(query.dataobj)[:, :, query.shape[2] // 2]
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(middle_slice, query.affine), path)
    segmentation = service.segment(path, rater="middle")
    assert tuple(segmentation.label.shape) == middle_slice.shape


def test_service_rejects_unknown_rater(service: RaterSegmentationService, query_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown rater 'nobody'"):
        service.segment(query_path, rater="nobody")


def test_service_missing_image_named(service: RaterSegmentationService, tmp_path: Path) -> None:
    with pytest.raises(InputImageError) as raised:
        service.segment(tmp_path / "absent.nii.gz", image_id="study-7")
    assert "'study-7' not found" in str(raised.value)


def test_service_empty_path_not_found(service: RaterSegmentationService) -> None:
    # MONAI Label passes an empty path for an image id that its datastore does not know.
    with pytest.raises(InputImageError, match="'study-9' not found"):
        service.segment("", image_id="study-9")


def test_service_unreadable_image_named(service: RaterSegmentationService, tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    with pytest.raises(InputImageError) as raised:
        service.segment(broken, image_id="study-8")
    assert "'study-8' cannot be segmented" in str(raised.value)
    assert "cannot read image" in str(raised.value)


def test_service_rejects_multichannel_image(service: RaterSegmentationService, tmp_path: Path) -> None:
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), path)
    with pytest.raises(InputImageError, match="2 channels"):
        service.segment(path)


def test_load_service_without_conf() -> None:
    service, error = load_service({})
    assert service is None
    assert isinstance(error, LabelServiceError)
    assert "checkpoint, datalist, support_case" in str(error)


def test_load_service_unknown_case(trained_checkpoint: Path, synthetic_datalist: Path) -> None:
    conf = {"checkpoint": str(trained_checkpoint), "datalist": str(synthetic_datalist), "support_case": "case99", "label_value": "1"}
    service, error = load_service(conf)
    assert service is None
    assert "'case99'" in str(error)


def test_load_service_needs_label_value_for_two_classes(trained_checkpoint: Path, synthetic_datalist: Path) -> None:
    conf = {"checkpoint": str(trained_checkpoint), "datalist": str(synthetic_datalist), "support_case": SUPPORT_CASE}
    _, error = load_service(conf)
    assert "declares 2 classes (1 (blob), 2 (bar))" in str(error)
    assert "--conf label_value" in str(error)


def test_load_service_undeclared_label_value(trained_checkpoint: Path, synthetic_datalist: Path) -> None:
    conf = {"checkpoint": str(trained_checkpoint), "datalist": str(synthetic_datalist), "support_case": SUPPORT_CASE, "label_value": "7"}
    _, error = load_service(conf)
    assert "label_value 7 is not a class" in str(error)


def test_load_service_missing_checkpoint(tmp_path: Path, synthetic_datalist: Path) -> None:
    conf = {"checkpoint": str(tmp_path / "absent.pt"), "datalist": str(synthetic_datalist), "support_case": SUPPORT_CASE, "label_value": "1"}
    _, error = load_service(conf)
    assert "Checkpoint file not found" in str(error)
    assert http_status(error) == 503
