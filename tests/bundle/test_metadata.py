"""Bundle metadata: verify_metadata against the shipped schema offline, and formats that match the network."""

from __future__ import annotations

import copy
import hashlib
import json

import jsonschema
import pytest
import torch

from japc.networks.factory import build_segmenter
from japc.pipeline.config import ModelConfig
from tests.bundle.commands import BUNDLE_DIR, run_bundle

SCHEMA = BUNDLE_DIR / "docs" / "metadata_schema.json"
METADATA = BUNDLE_DIR / "configs" / "metadata.json"


def test_verify_metadata_offline() -> None:
    digest = hashlib.md5(SCHEMA.read_bytes()).hexdigest()
    result = run_bundle(
        "verify_metadata",
        "--meta_file",
        "configs/metadata.json",
        "--filepath",
        "docs/metadata_schema.json",
        "--hash_val",
        digest,
    )
    log = result.stdout + result.stderr
    assert "skipped downloading" in log
    assert "metadata is verified with no error" in log


def test_schema_rejects_missing_fields() -> None:
    schema = json.loads(SCHEMA.read_text())
    metadata = json.loads(METADATA.read_text())
    jsonschema.validate(metadata, schema)
    for field in ("required_packages_version", "network_data_format", "authors"):
        broken = {key: value for key, value in metadata.items() if key != field}
        with pytest.raises(jsonschema.ValidationError, match=field):
            jsonschema.validate(broken, schema)
    broken = copy.deepcopy(metadata)
    del broken["network_data_format"]["inputs"]["support_masks"]["num_channels"]
    with pytest.raises(jsonschema.ValidationError, match="num_channels"):
        jsonschema.validate(broken, schema)


def test_versions_match_environment() -> None:
    import monai
    import numpy

    metadata = json.loads(METADATA.read_text())
    assert metadata["monai_version"] == monai.__version__
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == numpy.__version__
    assert metadata["version"] in metadata["changelog"]


def test_data_format_matches_network() -> None:
    """Inputs shaped as network_data_format describes give the described output [Q, R, 2, H, W]."""
    formats = json.loads(METADATA.read_text())["network_data_format"]
    inputs, output = formats["inputs"], formats["outputs"]["pred"]
    height, width = inputs["query_image"]["spatial_shape"]
    raters = inputs["support_masks"]["num_channels"]
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(feature_channels=32, attention_dim=8), pretrained=False).eval()
    support_images = torch.rand(2, inputs["support_image"]["num_channels"], height, width)
    support_masks = (torch.rand(2, raters, height, width) > 0.5).float()
    query_images = torch.rand(1, inputs["query_image"]["num_channels"], height, width)
    with torch.no_grad():
        logits = model(support_images, support_masks, query_images)
    assert logits.shape == (1, raters, output["num_channels"], *output["spatial_shape"])
    assert len(output["channel_def"]) == output["num_channels"]
