"""The japc MONAI Label app on a real MONAI Label server at 127.0.0.1, checked over HTTP.

The server runs from the label environment (see ``label_server.py``), with a network guard that
refuses and records any connection outside the loopback range. Each returned label is compared
with japc's own ``segment_query`` run in this process and thresholded for the requested rater.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from japc.label import CONSENSUS
from japc.pipeline.checkpoints import load_model
from japc.pipeline.datalist import load_datalist
from japc.pipeline.importers import import_lidc
from japc.pipeline.inference import load_query, prepare_support, segment_query
from tests.label.label_server import LabelServer, Response, copy_app, run_server
from tests.synthetic import RATERS

SUPPORT_CASE = "case01"
QUERY_CASES = ("case02", "case03")
BLOB = 1
# The server runs with numpy 1.26 and this process with numpy 2, so voxels whose probability lies
# within this margin of the threshold may round to either side.
THRESHOLD_MARGIN = 1e-2


def reference_probabilities(checkpoint: Path, datalist: Path, support_case: str, label_value: int, query: Path) -> np.ndarray:
    """Foreground probabilities ``[R, H, W, D]`` of ``query`` from japc's inference functions."""
    model, config, _ = load_model(checkpoint, "cpu")
    parsed = load_datalist(datalist)
    case = parsed.case(support_case)
    masks = [case["label"][rater] for rater in parsed.raters]
    support, _ = prepare_support(model, config, case["image"], masks, list(parsed.raters), label_value=label_value)
    image, _ = load_query(query)
    return segment_query(model, config, support, image).as_tensor().float().numpy()


def infer(server: LabelServer, image_id: str, **params: object) -> Response:
    return server.post(f"/infer/japc?image={image_id}", fields={"params": json.dumps(params)})


def check_label_response(
    response: Response, image: Path, probabilities: np.ndarray, raters: list[str], rater: str, threshold: float, folder: Path
) -> np.ndarray:
    """Check a multipart ``/infer`` response against the reference, and return the label array."""
    assert response.status == 200, response.body[:2000]
    parts = response.parts()
    params = json.loads(parts["params"][1])
    filename, content = parts["image"]
    assert filename.endswith(".nii.gz")
    label_path = folder / f"{image.name.split('.')[0]}-{rater}.nii.gz"
    label_path.write_bytes(content)

    label_image, query = nib.load(label_path), nib.load(image)
    label = np.asarray(label_image.dataobj)
    assert label.shape == query.shape
    np.testing.assert_allclose(label_image.affine, query.affine, atol=1e-4)
    assert set(np.unique(label).tolist()) <= {0, 1}

    probability = probabilities.mean(axis=0) if rater == CONSENSUS else probabilities[raters.index(rater)]
    decisive = np.abs(probability - threshold) > THRESHOLD_MARGIN
    assert decisive.mean() > 0.5, "too few voxels far from the threshold for a meaningful comparison"
    np.testing.assert_array_equal(label[decisive], (probability > threshold)[decisive].astype(label.dtype))

    masks = probabilities > threshold
    union = masks.any(axis=0)
    assert params["raters"] == raters
    assert params["rater"] == rater
    assert params["threshold"] == pytest.approx(threshold)
    assert params["foreground_voxels"] == int(label.sum())
    if union.any():
        expected_fraction = (union & ~masks.all(axis=0)).sum() / union.sum()
        assert params["disagreement_fraction"] == pytest.approx(expected_fraction, abs=0.02)
    return label


@pytest.fixture(scope="module")
def synthetic_studies(synthetic_datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Studies folder with the images of the synthetic query cases (datastore ids case02, case03)."""
    studies = tmp_path_factory.mktemp("studies")
    datalist = load_datalist(synthetic_datalist)
    for case_id in QUERY_CASES:
        shutil.copy(datalist.case(case_id)["image"], studies / f"{case_id}.nii.gz")
    return studies


@pytest.fixture(scope="module")
def synthetic_server(
    label_python: Path, trained_checkpoint: Path, synthetic_datalist: Path, synthetic_studies: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelServer]:
    work = tmp_path_factory.mktemp("label-server")
    conf = {"checkpoint": trained_checkpoint, "datalist": synthetic_datalist, "support_case": SUPPORT_CASE, "label_value": BLOB, "device": "cpu"}
    with run_server(label_python, copy_app(work / "app"), synthetic_studies, conf, work) as server:
        yield server


@pytest.fixture(scope="module")
def synthetic_reference(trained_checkpoint: Path, synthetic_datalist: Path, synthetic_studies: Path) -> np.ndarray:
    return reference_probabilities(trained_checkpoint, synthetic_datalist, SUPPORT_CASE, BLOB, synthetic_studies / "case02.nii.gz")


def test_info_lists_task_and_raters(synthetic_server: LabelServer) -> None:
    response = synthetic_server.get("/info/")
    assert response.status == 200
    model = response.json()["models"]["japc"]
    assert model["type"] == "segmentation"
    assert model["labels"] == {"blob": 1}
    assert model["config"]["rater"] == [CONSENSUS, *RATERS]
    assert model["config"]["threshold"] == 0.5


@pytest.mark.parametrize(("rater", "threshold"), [("tight", 0.5), ("loose", 0.5), (CONSENSUS, 0.4)])
def test_infer_rater_label(
    synthetic_server: LabelServer, synthetic_studies: Path, synthetic_reference: np.ndarray, tmp_path: Path, rater: str, threshold: float
) -> None:
    response = infer(synthetic_server, "case02", rater=rater, threshold=threshold)
    label = check_label_response(response, synthetic_studies / "case02.nii.gz", synthetic_reference, RATERS, rater, threshold, tmp_path)
    assert 0 < label.sum() < label.size, "an empty or full label cannot show that the rater was selected"


def test_infer_default_is_consensus(synthetic_server: LabelServer) -> None:
    response = synthetic_server.post("/infer/japc?image=case02&output=json")
    assert response.status == 200, response.body[:2000]
    result = response.json()
    assert result["rater"] == CONSENSUS
    assert result["threshold"] == 0.5


def test_infer_uploaded_file(synthetic_server: LabelServer, synthetic_studies: Path, tmp_path: Path) -> None:
    image = synthetic_studies / "case03.nii.gz"
    response = synthetic_server.post(
        "/infer/japc", fields={"params": json.dumps({"rater": "middle"})}, files={"file": ("upload.nii.gz", image.read_bytes())}
    )
    assert response.status == 200, response.body[:2000]
    filename, content = response.parts()["image"]
    (tmp_path / "label.nii.gz").write_bytes(content)
    assert nib.load(tmp_path / "label.nii.gz").shape == nib.load(image).shape


def test_bad_requests_then_good_request(synthetic_server: LabelServer, tmp_path: Path) -> None:
    unknown_rater = infer(synthetic_server, "case02", rater="nobody")
    assert unknown_rater.status == 400
    assert "Unknown rater 'nobody'" in unknown_rater.json()["detail"]
    assert "consensus, tight, middle, loose" in unknown_rater.json()["detail"]

    bad_threshold = infer(synthetic_server, "case02", rater="tight", threshold=1.5)
    assert bad_threshold.status == 400
    assert "'threshold'" in bad_threshold.json()["detail"]

    unknown_image = infer(synthetic_server, "case77", rater="tight")
    assert unknown_image.status == 404
    assert "'case77' not found" in unknown_image.json()["detail"]

    unreadable = synthetic_server.post("/infer/japc", files={"file": ("broken.nii.gz", b"not a NIfTI file")})
    assert unreadable.status == 422
    assert "cannot read image" in unreadable.json()["detail"]

    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), four_d)
    wrong_dimensions = synthetic_server.post("/infer/japc", files={"file": ("four_d.nii.gz", four_d.read_bytes())})
    assert wrong_dimensions.status == 422
    assert "2 channels" in wrong_dimensions.json()["detail"]

    unknown_model = synthetic_server.post("/infer/segmentation_spleen?image=case02")
    assert unknown_model.status == 400
    assert "segmentation_spleen" in unknown_model.json()["detail"]

    good = infer(synthetic_server, "case02", rater="tight", threshold=0.5)
    assert good.status == 200, good.body[:2000]
    assert json.loads(good.parts()["params"][1])["rater"] == "tight"


def test_server_never_left_loopback(synthetic_server: LabelServer) -> None:
    # Runs after the requests above (pytest keeps file order), so it covers start-up and requests.
    assert synthetic_server.get("/info/").status == 200
    assert synthetic_server.blocked_connections() == []


def test_server_without_support_configuration(label_python: Path, synthetic_studies: Path, tmp_path: Path) -> None:
    with run_server(label_python, copy_app(tmp_path / "app"), synthetic_studies, {}, tmp_path) as server:
        info = server.get("/info/")
        assert info.status == 200
        assert "not available" in info.json()["models"]["japc"]["description"]

        response = infer(server, "case02", rater="tight")
        assert response.status == 503
        detail = response.json()["detail"]
        assert "no usable support set" in detail
        assert "--conf checkpoint" in detail

        assert server.get("/info/").status == 200
        assert server.blocked_connections() == []


def test_lidc_nodule_server(
    label_python: Path, lidc_root: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    subjects = sorted(path for path in lidc_root.iterdir() if path.name.startswith("LIDC-IDRI-"))[:2]
    source = tmp_path / "source"
    for subject in subjects:
        shutil.copytree(subject, source / subject.name)
    datalist_path = import_lidc(source, tmp_path / "lidc", progress=False)
    datalist = load_datalist(datalist_path)
    cases = datalist.cases("training")
    support = next(case for case in cases if case["subject"] == subjects[0].name)
    query = next(case for case in cases if case["subject"] == subjects[1].name)
    studies = tmp_path / "studies"
    studies.mkdir()
    query_image = studies / f"{query['case']}.nii.gz"
    shutil.copy(query["image"], query_image)
    probabilities = reference_probabilities(trained_checkpoint, datalist_path, support["case"], 1, query_image)

    conf = {"checkpoint": trained_checkpoint, "datalist": datalist_path, "support_case": support["case"], "device": "cpu"}
    raters = list(datalist.raters)
    with run_server(label_python, copy_app(tmp_path / "app"), studies, conf, tmp_path) as server:
        for rater in (raters[0], raters[-1], CONSENSUS):
            response = infer(server, query["case"], rater=rater, threshold=0.5)
            check_label_response(response, query_image, probabilities, raters, rater, 0.5, tmp_path)

        unknown_rater = infer(server, query["case"], rater="rater-99")
        assert unknown_rater.status == 400
        assert "'rater-99'" in unknown_rater.json()["detail"]
        assert infer(server, query["case"], rater=raters[1]).status == 200
        assert server.blocked_connections() == []
