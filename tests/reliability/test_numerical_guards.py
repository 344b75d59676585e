"""NaN and infinity: training stops and keeps its last good checkpoint; predictions stay finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.data import MetaTensor

from japc.networks.losses import LossTerms
from japc.pipeline import training
from japc.pipeline.checkpoints import load_model, read_checkpoint
from japc.pipeline.datalist import load_datalist
from japc.pipeline.inference import prepare_support, run_inference, segment_query
from tests.reliability.common import SYNTHETIC_AFFINE, assert_one_error_line, files_under, run_japc, save_nifti
from tests.synthetic import RATERS, tiny_config

# --- training --------------------------------------------------------------------------------


def _config(datalist: Path, run: Path, folder: Path, checkpoint_every: int = 2) -> Path:
    content = tiny_config(datalist, run).to_dict()
    content["training"]["checkpoint_every"] = checkpoint_every
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def _nan_loss_at(monkeypatch: pytest.MonkeyPatch, bad_step: int) -> None:
    run_step = training.training_step

    def training_step(model, episode, *args, **kwargs) -> LossTerms:
        terms = run_step(model, episode, *args, **kwargs)
        if int(episode["step"]) == bad_step:
            return LossTerms(terms.segmentation * float("nan"), terms.alignment, terms.calibration)
        return terms

    monkeypatch.setattr(training, "training_step", training_step)


def test_nan_loss_stops_and_keeps_last_checkpoint(
    synthetic_datalist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _nan_loss_at(monkeypatch, bad_step=2)
    run = tmp_path / "run"
    status, lines = run_japc(["train", str(_config(synthetic_datalist, run, tmp_path))], capsys)
    latest = run / "checkpoints" / "latest.pt"
    assert status == 1
    assert_one_error_line(lines, "train", ["loss became nan at step 2", f"{latest} (step 2)", "case case00"])
    assert read_checkpoint(latest)["step"] == 2
    model, _, _ = load_model(latest)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt"]


def test_nan_loss_before_first_checkpoint(
    synthetic_datalist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _nan_loss_at(monkeypatch, bad_step=0)
    run = tmp_path / "run"
    status, lines = run_japc(["train", str(_config(synthetic_datalist, run, tmp_path))], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", ["loss became nan at step 0", "No checkpoint of this run was written"])
    assert files_under(run / "checkpoints") == []


def test_infinite_weights_are_never_saved(
    synthetic_datalist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finite loss whose update makes a weight infinite (episode 1) stops before the next checkpoint."""
    sgd_step = torch.optim.SGD.step
    calls = {"count": 0}

    def step(optimizer, *args, **kwargs):
        result = sgd_step(optimizer, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 2:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run = tmp_path / "run"
    status, lines = run_japc(["train", str(_config(synthetic_datalist, run, tmp_path, checkpoint_every=1))], capsys)
    latest = run / "checkpoints" / "latest.pt"
    assert status == 1
    assert_one_error_line(lines, "train", ["weights were NaN or infinite after step 1", f"{latest} (step 1)"])
    state = read_checkpoint(latest)
    assert state["step"] == 1
    assert all(bool(torch.isfinite(value).all()) for value in state["model"].values() if value.is_floating_point())


# --- predictions -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_support(trained_checkpoint: Path, synthetic_datalist: Path):
    model, config, _ = load_model(trained_checkpoint)
    case = load_datalist(synthetic_datalist).case("case01")
    support, _ = prepare_support(model, config, case["image"], [case["label"][r] for r in RATERS], label_value=1)
    return model, config, support


def _query(array: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], affine=torch.as_tensor(SYNTHETIC_AFFINE))


EXTREME_QUERIES = {
    "constant": np.full((32, 32, 8), 40.0),
    "all zero": np.zeros((32, 32, 8)),
    "one bright voxel": np.pad(np.full((1, 1, 1), 1e6), ((3, 28), (4, 27), (2, 5))),
    "extreme intensities": np.where(np.indices((32, 32, 8)).sum(axis=0) % 2 == 0, 1e30, -1e30),
    "subnormal intensities": np.random.default_rng(0).random((32, 32, 8)) * 1e-38,
}


@pytest.mark.parametrize("array", list(EXTREME_QUERIES.values()), ids=list(EXTREME_QUERIES))
def test_predictions_of_extreme_queries_are_finite(model_and_support, array: np.ndarray) -> None:
    model, config, support = model_and_support
    probabilities = segment_query(model, config, support, _query(array)).float()
    assert probabilities.shape == (len(RATERS), 32, 32, 8)
    assert bool(torch.isfinite(probabilities).all())
    assert float(probabilities.min()) >= 0.0
    assert float(probabilities.max()) <= 1.0


def test_intensities_that_overflow_normalisation_are_rejected(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finite values near the float32 limit overflow the z-score; the query is rejected by name, nothing is written."""
    query = save_nifti(tmp_path / "saturated.nii.gz", np.where(np.indices((32, 32, 8)).sum(axis=0) % 2 == 0, 3e38, -3e38).astype(np.float32))
    case = load_datalist(synthetic_datalist).case("case01")
    output = tmp_path / "out"
    arguments = ["infer", str(trained_checkpoint), "--support-image", case["image"], "--support-masks", case["label"]["middle"]]
    status, lines = run_japc([*arguments, "--queries", str(query), "--output", str(output)], capsys)
    assert status == 1
    assert_one_error_line(lines, "infer", [str(query), "gave NaN or infinite values", "3e+38"])
    assert files_under(output) == []


def test_segment_query_leaves_the_query_unchanged(model_and_support) -> None:
    """The query already has the network's size, so no step copies it; normalisation must not change it in place."""
    model, config, support = model_and_support
    query = _query(np.random.default_rng(1).random((32, 32, 8)) * 300.0)
    before = query.as_tensor().clone()
    first = segment_query(model, config, support, query)
    assert torch.equal(query.as_tensor(), before)
    assert torch.equal(segment_query(model, config, support, query), first)


def test_zero_features_and_empty_support_give_finite_logits(model_and_support) -> None:
    model, _, _ = model_and_support
    features = torch.zeros(2, 32, 4, 4)
    empty_masks = torch.zeros(1, len(RATERS), 32, 32)
    some_masks = empty_masks.clone()
    some_masks[:, :, 8:20, 8:20] = 1.0
    for support_features, masks in ((features[:1], empty_masks), (features[:1], some_masks), (torch.randn(1, 32, 4, 4), empty_masks)):
        logits, calibration_loss = model.segment_features(support_features, masks, features, (32, 32))
        assert logits.shape == (2, len(RATERS), 2, 32, 32)
        assert bool(torch.isfinite(logits).all())
        assert bool(torch.isfinite(calibration_loss))


def test_training_losses_finite_for_blank_episode(model_and_support) -> None:
    """Constant images with all-background masks: every loss term is finite and so is the gradient."""
    model, _, _ = model_and_support
    model.train()
    try:
        episode = {
            "support_image": torch.zeros(1, 32, 32),
            "support_masks": torch.zeros(len(RATERS), 32, 32),
            "query_image": torch.full((1, 32, 32), 3.0),
            "query_masks": torch.zeros(len(RATERS), 32, 32),
        }
        terms = training.training_step(model, episode, (0.05, 1.0))
        for name, value in terms.as_floats().items():
            assert np.isfinite(value), name
        terms.total.backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_written_probability_maps_are_finite(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    import nibabel as nib

    query = save_nifti(tmp_path / "constant.nii.gz", np.full((40, 36, 7), 12.5, np.float32))
    case = load_datalist(synthetic_datalist).case("case01")
    records = run_inference(
        trained_checkpoint, case["image"], [case["label"][r] for r in RATERS], [query], tmp_path / "out", label_value=1
    )
    mean = np.asarray(nib.load(records[0]["mean_probability"]).dataobj)
    assert mean.shape == (40, 36, 7)
    assert np.isfinite(mean).all()
    assert 0.0 <= mean.min() <= mean.max() <= 1.0
    for path in records[0]["masks"].values():
        assert set(np.unique(np.asarray(nib.load(path).dataobj)).tolist()) <= {0, 1}
