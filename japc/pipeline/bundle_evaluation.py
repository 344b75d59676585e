"""Support/query evaluation as a MONAI evaluator: the items, and the inferer that segments them.

The bundle scores japc's evaluation protocol (see :mod:`japc.pipeline.evaluation`) with
MONAI's stock ``SupervisedEvaluator``. :class:`SupportQueryPairs` lists one item per support,
query and class, and MONAI's ``PrepareBatchExtraInput`` hands the support image and masks to
:class:`SupportQueryInferer` as extra arguments, next to the query image. The inferer returns
binary predictions ``[B, R, h, w, n]`` for the ``n`` scored slices, and the item's ``label`` contains
the query's rater masks on the same slices, so any MONAI metric sees matching tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from japc.errors import DatalistError, InputImageError
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.bundle_metrics import pair_name
from japc.pipeline.config import RunConfig
from japc.pipeline.datalist import MultiRaterDatalist, load_datalist
from japc.pipeline.preprocessing import case_preprocessing
from japc.pipeline.protocol import assign_chunks, slices_with_class
from japc.pipeline.support import encode_slices, encode_support

__all__ = ["unwrap_segmenter", "SupportQueryPairs", "SupportQueryInferer"]

logger = logging.getLogger(__name__)


def unwrap_segmenter(network: nn.Module) -> FewShotSegmenter:
    """Return the segmenter inside ``DistributedDataParallel`` and training wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    segmenter = getattr(network, "segmenter", network)
    if not isinstance(segmenter, FewShotSegmenter):
        raise TypeError(f"Expected a FewShotSegmenter (or a wrapper around one), got {type(network).__name__}.")
    return segmenter


class SupportQueryPairs(Dataset):
    """Items of japc's support/query evaluation of one datalist split.

    Every case of the split is loaded and preprocessed once, with the run configuration's
    preprocessing. Items follow ``japc evaluate``: for each query case, each support case
    other than the query, and each class that both contain, one item. With ``oracle`` (the
    published protocol) the scored slices are the query's ground-truth class range, otherwise
    the whole volume.

    Item keys: ``image`` (query ``[1, h, w, D]`` float32), ``label`` (query rater masks of the
    class on the scored slices, ``[R, h, w, n]`` uint8), ``support_image`` ``[1, h, w, D_s]``,
    ``support_masks`` ``[R, h, w, D_s]`` uint8, ``first`` and ``last`` (scored slice range),
    ``pair`` (``support=<id>;query=<id>;class=<name>``).

    Args:
        config: run configuration (its preprocessing, and ``data.test_classes`` when
            ``classes`` is None).
        split: datalist split to evaluate.
        datalist: datalist file; None uses ``config.data.datalist``.
        supports: ``first`` (first case of the split), ``all`` (every case in turn) or case ids.
        classes: class names; None for ``config.data.test_classes``, or every class when that
            list is empty.
        oracle: score only the query's ground-truth class z-range.

    Raises:
        DatalistError: unknown split, class or support id, fewer than two cases, or no
            support/query pair sharing a class.
    """

    def __init__(
        self,
        config: RunConfig,
        split: str,
        datalist: str | Path | None = None,
        supports: str | list[str] = "first",
        classes: list[str] | None = None,
        oracle: bool = True,
    ) -> None:
        self.datalist = load_datalist(datalist or config.data.datalist)
        self.split = split
        self.classes = self._select_classes(classes or config.data.test_classes or None)
        self.raters = list(self.datalist.raters)
        self.oracle = oracle
        self.cases = self._prepare_cases(self.datalist, split, config)
        if len(self.cases) < 2:
            raise DatalistError(
                f"Split {split!r} of {self.datalist.path} has {len(self.cases)} case(s); evaluation needs a support "
                "and at least one query."
            )
        self.supports = self._resolve_supports(supports)
        self.items = self._list_items()
        if not self.items:
            raise DatalistError(f"No support/query pair of split {split!r} shares a class, so nothing can be scored.")
        logger.info(
            "Evaluation split %r: %d cases, %d support/query/class items", split, len(self.cases), len(self.items)
        )

    def _select_classes(self, names: list[str] | None) -> dict[str, int]:
        if not names:
            return dict(self.datalist.classes)
        unknown = [name for name in names if name not in self.datalist.classes]
        if unknown:
            raise DatalistError(
                f"Unknown class(es) {unknown} for {self.datalist.path}; valid classes are {sorted(self.datalist.classes)}."
            )
        return {name: self.datalist.classes[name] for name in names}

    @staticmethod
    def _prepare_cases(
        datalist: MultiRaterDatalist, split: str, config: RunConfig
    ) -> dict[str, dict[str, torch.Tensor]]:
        transform = case_preprocessing(config.preprocessing, datalist)
        cases = {}
        for case in tqdm(datalist.cases(split), desc="loading", unit="case"):
            data = transform(dict(case))
            cases[case["case"]] = {
                "image": torch.as_tensor(data["image"]).float().clone(),
                "label": torch.as_tensor(data["label"]).to(torch.uint8).clone(),
            }
        return cases

    def _resolve_supports(self, supports: str | list[str]) -> list[str]:
        ids = list(self.cases)
        if supports == "first":
            return ids[:1]
        if supports == "all":
            return ids
        requested = [supports] if isinstance(supports, str) else list(supports)
        unknown = [case for case in requested if case not in self.cases]
        if unknown:
            raise DatalistError(
                f"Support case(s) {unknown} are not in split {self.split!r}; use 'first', 'all' or ids such as {ids[:3]}."
            )
        return requested

    def _list_items(self) -> list[tuple[str, str, str, int, int]]:
        items = []
        for query_id, query in self.cases.items():
            depth = query["image"].shape[-1]
            for support_id in self.supports:
                if support_id == query_id:
                    continue
                for name, value in self.classes.items():
                    if len(slices_with_class(self.cases[support_id]["label"] == value)) == 0:
                        continue
                    if self.oracle:
                        present = slices_with_class(query["label"] == value)
                        if len(present) == 0:
                            continue
                        first, last = int(present[0]), int(present[-1])
                    else:
                        first, last = 0, depth - 1
                    items.append((support_id, query_id, name, first, last))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        support_id, query_id, name, first, last = self.items[index]
        value = self.classes[name]
        support, query = self.cases[support_id], self.cases[query_id]
        return {
            "image": query["image"],
            "label": (query["label"][..., first : last + 1] == value).to(torch.uint8),
            "support_image": support["image"],
            "support_masks": (support["label"] == value).to(torch.uint8),
            "first": first,
            "last": last,
            "pair": pair_name(support_id, query_id, name),
        }


class SupportQueryInferer(Inferer):
    """Segment the scored slices of query images with the support set of each item.

    Support slices are chosen and assigned to the query slices as in ``japc evaluate`` (1/6,
    1/2, 5/6 of the support's class range for three chunks). Called by MONAI's evaluator as
    ``inferer(query_image, network, support_image=..., support_masks=..., first_slice=...,
    last_slice=...)``, with the keyword arguments from ``PrepareBatchExtraInput``.

    Args:
        num_chunks: chunks of the class range (3 in the published protocol).
        shots: support slices per chunk.
        batch_size: slices per encoder batch.
    """

    def __init__(self, num_chunks: int = 3, shots: int = 1, batch_size: int = 32) -> None:
        super().__init__()
        self.num_chunks = num_chunks
        self.shots = shots
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        support_image: torch.Tensor,
        support_masks: torch.Tensor,
        first_slice: torch.Tensor,
        last_slice: torch.Tensor,
    ) -> torch.Tensor:
        """Return binary predictions ``[B, R, h, w, n]`` (float32) of the scored slices.

        Args:
            inputs: query images ``[B, 1, h, w, D]``.
            network: the segmenter (or a wrapper around it).
            support_image: ``[B, 1, h, w, D_s]``.
            support_masks: binary rater masks of the class ``[B, R, h, w, D_s]``.
            first_slice: ``[B]`` first scored slice of each query.
            last_slice: ``[B]`` last scored slice.
        """
        model = unwrap_segmenter(network)
        predictions = [
            self._predict(model, inputs[b], support_image[b], support_masks[b], int(first_slice[b]), int(last_slice[b]))
            for b in range(inputs.shape[0])
        ]
        return torch.stack(predictions).float()

    def _predict(
        self,
        model: FewShotSegmenter,
        query: torch.Tensor,
        image: torch.Tensor,
        masks: torch.Tensor,
        first: int,
        last: int,
    ) -> torch.Tensor:
        query, image, masks = _plain(query), _plain(image), _plain(masks)
        support = encode_support(model, image.float(), masks, self.num_chunks, self.shots, self.batch_size)
        if support is None:
            raise InputImageError("The support masks of an evaluation item do not mark the class on any slice.")
        features = encode_slices(model, query[..., first : last + 1].permute(3, 0, 1, 2).float(), self.batch_size)
        image_size = tuple(query.shape[1:3])
        prediction = torch.zeros((masks.shape[0], *image_size, last - first + 1), dtype=torch.bool, device=query.device)
        chunk_of_slice = assign_chunks(first, last, self.num_chunks)
        for chunk in range(support.num_chunks):
            positions = [z - first for z, c in chunk_of_slice.items() if c == chunk]
            if not positions:
                continue
            logits = support.logits(model, chunk, features[positions], image_size)
            prediction[..., positions] = (logits[:, :, 1] > logits[:, :, 0]).permute(1, 2, 3, 0)
        return prediction


def _plain(value: torch.Tensor) -> torch.Tensor:
    """Drop MetaTensor metadata, which costs more than the small operations that follow."""
    return value.as_tensor() if hasattr(value, "as_tensor") else value
