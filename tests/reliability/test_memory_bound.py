"""Peak memory of inference stays within the bound documented in ``segment_query``.

Two subprocesses run the same script. The baseline imports japc, loads the model and encodes
a small support. The measured one does the same, then loads and segments a query volume. Both
report their peak resident memory (``ru_maxrss``). The measured peak may exceed the baseline's
by at most the documented ``M = 12 H W D + 2 R H W D + 4 h w D' (R + 2) + B h w (3 E + 16 R)``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from japc.networks.factory import build_segmenter
from japc.pipeline.checkpoints import save_checkpoint
from japc.pipeline.config import ModelConfig, PreprocessingConfig, RunConfig

RATERS = 3

SCRIPT = """
import json
import resource
import sys

from japc.pipeline.checkpoints import load_model
from japc.pipeline.inference import load_query, prepare_support, segment_query

checkpoint, support_image, masks, query, batch_size = sys.argv[1:6]
model, config, _ = load_model(checkpoint)
support, _ = prepare_support(model, config, support_image, masks.split(","), label_value=1, batch_size=int(batch_size))
shape = None
if query != "-":
    image, _ = load_query(query)
    shape = list(segment_query(model, config, support, image, batch_size=int(batch_size)).shape)
print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "shape": shape}))
"""


def _largest_activation_per_pixel(model: torch.nn.Module, size: int = 64) -> float:
    """E: the largest output of any encoder layer, in bytes per input pixel of one slice."""
    largest = [0.0]

    def record(module: torch.nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output[0].numel() * output.element_size() / size**2)

    hooks = [m.register_forward_hook(record) for m in model.encoder.modules() if not list(m.children())]
    with torch.inference_mode():
        model.encode(torch.zeros(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    return largest[0]


def memory_bound(query_shape: tuple[int, int, int], network_size: int, batch_size: int, largest_activation: float) -> float:
    """The documented bound M in bytes (no slice resampling, so D' = D)."""
    height, width, depth = query_shape
    query_voxels = height * width * depth
    network_pixels = network_size * network_size
    return (
        12 * query_voxels
        + 2 * RATERS * query_voxels
        + 4 * network_pixels * depth * (RATERS + 2)
        + batch_size * network_pixels * (3 * largest_activation + 16 * RATERS)
    )


def _write_inputs(folder: Path, query_shape: tuple[int, int, int], network_size: int) -> dict:
    config = RunConfig(
        model=ModelConfig(encoder="resnet18", feature_channels=32, attention_dim=8),
        preprocessing=PreprocessingConfig(spatial_size=[network_size, network_size]),
    )
    model = build_segmenter(config.model, pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": config.to_dict()}, folder / "model.pt")

    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(100, 20, (64, 64, 12)).astype(np.float32), affine), folder / "support.nii.gz")
    masks = []
    for rater in range(RATERS):
        mask = np.zeros((64, 64, 12), np.uint8)
        mask[20 : 40 + rater, 18:44, 3:9] = 1
        masks.append(folder / f"rater-{rater}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), masks[-1])
    query = folder / "query.nii"  # uncompressed, so writing it stays quick
    nib.save(nib.Nifti1Image(rng.normal(100, 20, query_shape).astype(np.float32), affine), query)
    return {"model": model, "checkpoint": folder / "model.pt", "support": folder / "support.nii.gz", "masks": masks, "query": query}


def _peak(inputs: dict, query: Path | str, batch_size: int) -> dict:
    arguments = [str(inputs["checkpoint"]), str(inputs["support"]), ",".join(map(str, inputs["masks"])), str(query), str(batch_size)]
    result = subprocess.run([sys.executable, "-c", SCRIPT, *arguments], capture_output=True, text=True, check=False, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check_bound(folder: Path, query_shape: tuple[int, int, int], network_size: int, batch_size: int) -> None:
    inputs = _write_inputs(folder, query_shape, network_size)
    largest_activation = _largest_activation_per_pixel(inputs["model"])
    assert largest_activation == 64.0  # resnet18's first convolution: 64 channels at stride 2, float32
    baseline = _peak(inputs, "-", batch_size)["peak_bytes"]
    measured = _peak(inputs, inputs["query"], batch_size)
    assert measured["shape"] == [RATERS, *query_shape]
    bound = memory_bound(query_shape, network_size, batch_size, largest_activation)
    increase = measured["peak_bytes"] - baseline
    assert increase <= bound, f"peak rose by {increase / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB"


def test_inference_memory_within_bound(tmp_path: Path) -> None:
    """A 384 x 384 x 48 query at 96 x 96: the volume terms of the bound dominate (about 150 MiB)."""
    _check_bound(tmp_path, (384, 384, 48), network_size=96, batch_size=8)


@pytest.mark.slow
def test_large_ct_memory_within_bound(tmp_path: Path) -> None:
    """The documented case: a 512 x 512 x 300 CT at 256 x 256 in batches of 16 slices (bound 2.1 GB)."""
    _check_bound(tmp_path, (512, 512, 300), network_size=256, batch_size=16)
