"""Encoded support slices of one class, shared by evaluation and inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.devices import model_device
from japc.pipeline.protocol import slices_with_class, support_slice_indices

__all__ = ["SupportSet", "encode_slices", "encode_support"]


@torch.inference_mode()
def encode_slices(model: FewShotSegmenter, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Encode slices ``[N, 1, h, w]`` in batches of ``batch_size`` on the model's device.

    Returns:
        Features ``[N, C, h', w']`` on the model's device.
    """
    device = model_device(model)
    return torch.cat(
        [model.encode(images[i : i + batch_size].to(device)) for i in range(0, images.shape[0], batch_size)]
    )


@dataclass
class SupportSet:
    """Support slices of one class, per chunk of the class range.

    Attributes:
        features: per chunk, support features ``[K, C, h', w']``.
        masks: per chunk, rater masks ``[K, R, h, w]``.
        slices: per chunk, the support slice indices.
        prototypes: per chunk, the calibrated rater prototypes, pooled once and reused for every
            query. None when the head's prototypes depend on the query.
    """

    features: list[torch.Tensor]
    masks: list[torch.Tensor]
    slices: list[list[int]]
    prototypes: list[list[torch.Tensor]] | None = None

    @property
    def num_chunks(self) -> int:
        """Number of chunks of the class range."""
        return len(self.features)

    @torch.inference_mode()
    def logits(
        self, model: FewShotSegmenter, chunk: int, query_features: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Segment query features ``[Q, C, h', w']`` with chunk ``chunk``; returns ``[Q, R, 2, h, w]``."""
        if self.prototypes is not None:
            return model.score(query_features, self.prototypes[chunk], image_size)
        logits, _ = model.segment_features(self.features[chunk], self.masks[chunk], query_features, image_size)
        return logits


@torch.inference_mode()
def encode_support(
    model: FewShotSegmenter,
    image: torch.Tensor,
    masks: torch.Tensor,
    num_chunks: int = 3,
    shots: int = 1,
    batch_size: int = 32,
) -> SupportSet | None:
    """Choose and encode the support slices of one class.

    Args:
        model: segmenter in evaluation mode.
        image: preprocessed support image ``[1, h, w, D]``.
        masks: binary rater masks of the class ``[R, h, w, D]``.
        num_chunks: chunks of the class range.
        shots: support slices per chunk.
        batch_size: slices per encoder batch.

    Returns:
        The support set, or None when no rater marks the class on any slice.
    """
    chunks = support_slice_indices(slices_with_class(masks), num_chunks, shots)
    if not chunks[0]:
        return None
    features, chunk_masks = [], []
    for indices in chunks:
        features.append(encode_slices(model, image[..., indices].permute(3, 0, 1, 2).float(), batch_size))
        chunk_masks.append(masks[..., indices].permute(3, 0, 1, 2).float().to(model_device(model)))
    support = SupportSet(features, chunk_masks, chunks)
    if not model.head.query_dependent:
        support.prototypes = [model.rater_prototypes(f, m)[0] for f, m in zip(features, chunk_masks)]
    return support
