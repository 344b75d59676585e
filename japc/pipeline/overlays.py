"""PNG overlays of per-rater predictions: each rater's contour in its own colour on the image."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from japc.pipeline.files import atomic_path  # noqa: E402

__all__ = ["overlay_slices", "write_overlays"]


def overlay_slices(masks: torch.Tensor, count: int = 4) -> list[int]:
    """Choose up to ``count`` slices spread over the predicted foreground (or the whole volume).

    Args:
        masks: binary predictions ``[R, H, W, D]``.
    """
    depth = masks.shape[-1]
    present = np.flatnonzero(masks.flatten(0, -2).any(dim=0).numpy())
    candidates = present if len(present) else np.arange(depth)
    picks = np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))).round().astype(int)
    return sorted({int(candidates[i]) for i in picks})


def write_overlays(
    image: torch.Tensor, masks: torch.Tensor, raters: list[str], folder: Path, stem: str, count: int = 4
) -> list[Path]:
    """Write ``<stem>_slice-<k>.png`` for a few slices with one coloured contour per rater.

    Args:
        image: query ``[1, H, W, D]`` on its original grid.
        masks: binary predictions ``[R, H, W, D]`` on the same grid.
        raters: rater ids, in the order of ``masks``.
        folder: output folder.
        stem: file name prefix.
        count: maximum number of slices.

    Returns:
        Paths of the PNG files written.
    """
    colours = plt.get_cmap("tab10").colors
    volume = torch.as_tensor(image)[0].float().numpy()
    written = []
    for k in overlay_slices(masks, count):
        figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
        # Rows of the array run along the first voxel axis; transpose so it is shown left to right.
        axis.imshow(volume[..., k].T, cmap="gray", origin="lower")
        handles = []
        for r, rater in enumerate(raters):
            colour = colours[r % len(colours)]
            mask = masks[r, ..., k].numpy().astype(float).T
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
            handles.append(Line2D([0], [0], color=colour, label=f"{rater} ({int(mask.sum())} px)"))
        axis.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.6)
        axis.set_title(f"{stem}, slice {k}", fontsize=9)
        axis.axis("off")
        path = folder / f"{stem}_slice-{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            figure.savefig(temporary, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
