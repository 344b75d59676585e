"""Tests of the demo dataset built from installed brain templates and atlases."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from japc.pipeline.datalist import check_case, load_datalist
from japc.pipeline.demo_data import DEMO_CLASSES, DEMO_SOURCES, build_demo_datalist, format_licences

TEMPLATES = [s.name for s in DEMO_SOURCES if s.role == "image"]
ATLASES = [s.name for s in DEMO_SOURCES if s.role == "rater"]
SPACING_MM = 2.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Build the demo once for this module and return the cache folder, datalist and loaded cases."""
    cache = tmp_path_factory.mktemp("demo-cache")
    path = build_demo_datalist(cache, spacing_mm=SPACING_MM)
    datalist = load_datalist(path)
    loaded = {case["case"]: check_case(case, datalist) for case in datalist.cases("test")}
    return cache, path, datalist, loaded


def _dice(first: torch.Tensor, second: torch.Tensor) -> float:
    return float(2 * (first & second).sum() / (first.sum() + second.sum()))


def test_demo_datalist_structure(demo):
    cache, path, datalist, _ = demo
    assert path == cache / "demo" / "datalist.json"
    assert datalist.raters == ATLASES
    assert datalist.classes == DEMO_CLASSES
    assert [c["case"] for c in datalist.cases("training")] == TEMPLATES
    assert [c["case"] for c in datalist.cases("test")] == TEMPLATES
    assert "not an accuracy benchmark" in datalist.description
    assert "standard space" in datalist.description
    assert datalist.modality == "MR"


def test_every_class_in_every_rater(demo):
    _, _, _, loaded = demo
    for template, case in loaded.items():
        label = case["label"]
        for rater_index, rater in enumerate(ATLASES):
            values = set(torch.unique(label[rater_index]).tolist())
            assert values == {0, *DEMO_CLASSES.values()}, (template, rater, values)


def test_labels_share_image_grid(demo):
    _, _, datalist, loaded = demo
    for template, case in loaded.items():
        image = case["image"]
        affine = image.affine.numpy()
        # RAS grid with isotropic spacing: a positive diagonal and no rotation.
        assert np.allclose(affine[:3, :3], np.eye(3) * SPACING_MM), template
        assert tuple(case["label"].shape) == (len(ATLASES), *image.shape[1:])
        for rater, file in datalist.case(template)["label"].items():
            label_file = nib.load(file)
            assert label_file.shape == tuple(image.shape[1:]), (template, rater)
            assert np.allclose(label_file.affine, affine), (template, rater)


def test_brain_is_inside_the_crop(demo):
    _, _, _, loaded = demo
    for template, case in loaded.items():
        image = case["image"][0]
        assert float(image.max()) > 0
        # The crop margin keeps the border slices outside the brain.
        for axis in range(3):
            assert float(image.select(axis, 0).abs().max()) == 0.0, (template, axis)
            assert float(image.select(axis, image.shape[axis] - 1).abs().max()) == 0.0, (template, axis)


def test_raters_differ_but_overlap(demo):
    _, _, _, loaded = demo
    thalamus = DEMO_CLASSES["thalamus"]
    aal, harvard_oxford = ATLASES.index("aal"), ATLASES.index("harvard-oxford")
    for template, case in loaded.items():
        label = case["label"]
        for class_value in DEMO_CLASSES.values():
            masks = label == class_value
            for first in range(len(ATLASES)):
                for second in range(first + 1, len(ATLASES)):
                    dice = _dice(masks[first], masks[second])
                    assert 0.3 < dice < 0.99, (template, class_value, ATLASES[first], ATLASES[second], dice)
        assert 0.5 < _dice(label[aal] == thalamus, label[harvard_oxford] == thalamus) < 0.95


def test_hemispheres_merged(demo):
    _, _, _, loaded = demo
    for template, case in loaded.items():
        image = case["image"]
        putamen = (case["label"][0] == DEMO_CLASSES["putamen"]).nonzero().double()
        world_x = putamen[:, 0] * image.affine[0, 0] + image.affine[0, 3]
        # Putamen lies lateral in both hemispheres: voxels on both sides of x = 0 mm.
        assert float((world_x < -10).sum()) > 50, template
        assert float((world_x > 10).sum()) > 50, template


def test_second_call_uses_cache(demo):
    cache, path, _, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (cache / "demo").rglob("*") if p.is_file()}
    again = build_demo_datalist(cache, spacing_mm=SPACING_MM)
    assert again == path
    after = {p: p.stat().st_mtime_ns for p in (cache / "demo").rglob("*") if p.is_file()}
    assert after == before


def test_manifest_records_sources(demo):
    cache, _, _, _ = demo
    manifest = json.loads((cache / "demo" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["spacing_mm"] == SPACING_MM
    files = {entry["file"] for entry in manifest["sources"]}
    assert {s.file for s in DEMO_SOURCES} <= files
    assert all(entry["size"] > 0 for entry in manifest["sources"])
    leftovers = [p.name for p in cache.iterdir() if p.name != "demo"]
    assert leftovers == []


def test_changed_manifest_triggers_rebuild(tmp_path, demo):
    cache, _, _, _ = demo
    copy = tmp_path / "cache"
    os.makedirs(copy)
    shutil.copytree(cache / "demo", copy / "demo")
    manifest_path = copy / "demo" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["sources"][0]["size"] += 1
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    marker = copy / "demo" / "stale-marker"
    marker.write_text("old build", encoding="utf-8")

    build_demo_datalist(copy, spacing_mm=SPACING_MM)

    assert not marker.exists()
    rebuilt = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert rebuilt["sources"][0]["size"] == manifest["sources"][0]["size"] - 1


def test_licences_name_every_source():
    text = format_licences()
    for source in DEMO_SOURCES:
        assert source.name in text
        assert source.file in text
    assert "CC BY-NC" in text
    assert "FreeSurfer" in text
    assert "https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence" in text
