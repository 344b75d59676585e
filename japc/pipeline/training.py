"""Self-supervised episodic training with the two-stage schedule.

Stage 1 trains the base prototype network on superpixel pseudo-labels with one rater and no
calibration. Stage 2 starts from the stage-1 weights with a freshly initialised calibration
module, pseudo-style raters and a fresh optimiser. A run whose calibration mode is ``none`` is
the base network: it trains all iterations as stage 1.

Every episode is a pure function of (run seed, step index), so data-loader workers draw
distinct episodes and a resumed run receives exactly the episodes of an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from japc.errors import CheckpointError, DatalistError, JapcError
from japc.networks.factory import build_segmenter
from japc.networks.losses import LossTerms, rater_cross_entropy
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.checkpoints import read_checkpoint, save_checkpoint
from japc.pipeline.config import RunConfig
from japc.pipeline.datalist import load_datalist
from japc.pipeline.devices import autocast, model_device, resolve_device
from japc.pipeline.files import atomic_write_text, ensure_writable_folder
from japc.pipeline.preprocessing import cached_training_dataset
from japc.transforms.episodes import episode_transform, make_episode

__all__ = ["Stage", "EpisodeDataset", "training_step", "EpisodicTrainer", "train"]

logger = logging.getLogger(__name__)

EPISODE_KEYS = ("support_image", "support_masks", "query_image", "query_masks")

# Draws per step before an episode with an empty mask is kept anyway (about 2.5 % of LIDC episodes
# need a second draw, measured on 200 steps).
MAX_EPISODE_DRAWS = 20


def _masks_usable(episode: dict[str, Any]) -> bool:
    """Whether every rater's support and query masks contain foreground and background.

    The augmentation can push a superpixel at the slice border out of one copy. A support mask
    without foreground leaves the rater without a foreground prototype, and its query
    cross-entropy then measures nothing but that gap, so such episodes are drawn again.
    """
    for key in ("support_masks", "query_masks"):
        foreground = episode[key].flatten(1).sum(dim=1)
        if bool((foreground == 0).any()) or bool((foreground == episode[key][0].numel()).any()):
            return False
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: episodes ``[start, stop)`` with its rater and calibration settings."""

    index: int
    start: int
    stop: int
    num_raters: int
    pseudo_styles: bool
    calibration: bool


def plan_stages(config: RunConfig) -> list[Stage]:
    """Split the iteration budget into the stages that the configuration requests."""
    training = config.training
    if config.model.calibration == "none":
        return [Stage(1, 0, training.iterations, 1, False, False)]
    stages = []
    stop = config.stage1_stop
    if stop > 0:
        stages.append(Stage(1, 0, stop, 1, False, False))
    if stop < training.iterations:
        stages.append(Stage(2, stop, training.iterations, training.num_raters, training.pseudo_styles, True))
    return stages


class EpisodeDataset(Dataset):
    """Episodes drawn from preprocessed training volumes; item ``i`` is the episode of step ``i``.

    A volume is drawn with probability proportional to its number of slices that hold a
    superpixel, so every such slice is equally likely over the data set.

    Args:
        volumes: preprocessed volumes with ``image`` ``[1, h, w, D]`` and ``superpixels``.
        num_raters: raters per episode.
        pseudo_styles: draw pseudo-styles for raters 1..R-1 (else every rater gets the mask).
        seed: run seed.
    """

    def __init__(self, volumes: list[dict[str, Any]], num_raters: int, pseudo_styles: bool, seed: int) -> None:
        self.volumes = volumes
        self.seed = seed
        self.transform = episode_transform(num_raters=num_raters, pseudo_styles=pseudo_styles)
        counts = np.array([int((v["superpixels"] > 0).flatten(0, -2).any(dim=0).sum()) for v in volumes], float)
        if counts.sum() == 0:
            raise DatalistError(
                "No training slice contains a superpixel, so no episode can be drawn. Check the intensity "
                "normalisation and preprocessing.body_mask_threshold (a threshold above every intensity "
                "gives empty body masks)."
            )
        self.probabilities = counts / counts.sum()

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(step)])
        for _ in range(MAX_EPISODE_DRAWS):
            volume = self.volumes[int(rng.choice(len(self.volumes), p=self.probabilities))]
            episode = make_episode(volume, self.transform, seed=int(rng.integers(2**31 - 1)))
            if _masks_usable(episode):
                break
        item = {key: episode[key] for key in EPISODE_KEYS}
        item["step"] = int(step)
        item["case"] = str(volume.get("case", ""))
        item["slice_index"] = int(episode.get("slice_index", -1))
        return item


def training_step(
    model: FewShotSegmenter,
    episode: dict[str, Any],
    class_weights: tuple[float, float] | None,
    amp: bool = False,
) -> LossTerms:
    """Run one episode forward and return its loss terms.

    Args:
        model: segmenter in training mode; the episode moves to its device.
        episode: ``support_image`` ``[1, H, W]``, ``support_masks`` ``[R, H, W]``,
            ``query_image`` ``[1, H, W]``, ``query_masks`` ``[R, H, W]`` (one episode, no batch axis).
        class_weights: background and foreground weights of the query cross-entropy.
        amp: bfloat16 autocast on CUDA (no effect on the CPU).
    """
    device = model_device(model)
    support_images = episode["support_image"].unsqueeze(0).float().to(device)
    support_masks = episode["support_masks"].unsqueeze(0).float().to(device)
    query_images = episode["query_image"].unsqueeze(0).float().to(device)
    query_masks = episode["query_masks"].unsqueeze(0).float().to(device)
    with autocast(device, amp):
        output = model.run_episode(support_images, support_masks, query_images)
        output.logits = output.logits.float()
        segmentation = rater_cross_entropy(output.logits, query_masks, class_weights)
        alignment = model.alignment_loss(output, support_masks)
    return LossTerms(segmentation, alignment, output.calibration_loss.float())


class EpisodicTrainer:
    """Train a segmenter as a configuration describes, with checkpoints and resume.

    Files under ``config.output_dir``: ``checkpoints/latest.pt`` (written every
    ``checkpoint_every`` steps and at the end of each stage), ``checkpoints/stage1.pt``,
    ``checkpoints/final.pt``, ``training_log.csv`` (mean losses every ``log_every`` steps),
    ``config.json`` and ``cache/`` (preprocessed volumes).
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.stages = plan_stages(config)
        torch.manual_seed(config.training.seed)
        self.device = resolve_device(config.training.device)
        self.model = build_segmenter(config.model).to(self.device)
        self.volumes: list[dict[str, Any]] | None = None
        # Step of the last checkpoint written (or resumed from) by this trainer, for error messages.
        self.last_checkpoint_step: int | None = None

    def load_volumes(self) -> list[dict[str, Any]]:
        """Preprocess (or read from the cache) every training volume."""
        data = self.config.data
        datalist = load_datalist(data.datalist)
        cases = datalist.cases(data.split)
        dataset = cached_training_dataset(self.config.preprocessing, datalist, cases, self.output_dir / "cache")
        volumes = [dataset[i] for i in tqdm(range(len(dataset)), desc="preprocessing", unit="volume")]
        missing = [name for name in data.test_classes if name not in datalist.classes]
        if missing:
            raise DatalistError(
                f"data.test_classes names {missing}, which are not classes of {datalist.path}; "
                f"valid classes are {sorted(datalist.classes)}."
            )
        if data.setting == 2:
            excluded = [datalist.classes[name] for name in data.test_classes]
            volumes = [exclude_slices_with_classes(volume, excluded) for volume in volumes]
            dropped = sum(v["excluded_slices"] for v in volumes)
            logger.info("Setting 2: dropped %d training slices that contain %s", dropped, data.test_classes)
        if self.config.preprocessing.dataset_zscore:
            volumes = self._apply_dataset_statistics(volumes)
        logger.info("Loaded %d training volumes from split %r of %s", len(volumes), data.split, datalist.path)
        return volumes

    def _apply_dataset_statistics(self, volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Z-score every training image with the training set's mean and standard deviation.

        The statistics are computed once (unless the configuration gives them) and stored in the
        configuration, so checkpoints carry them to evaluation and inference.
        """
        preprocessing = self.config.preprocessing
        if preprocessing.dataset_mean is None or preprocessing.dataset_std is None:
            total = sum(float(v["image"].double().sum()) for v in volumes)
            count = sum(v["image"].numel() for v in volumes)
            mean = total / count
            variance = sum(float(((v["image"].double() - mean) ** 2).sum()) for v in volumes) / count
            preprocessing.dataset_mean = mean
            preprocessing.dataset_std = max(variance**0.5, 1e-8)
            logger.info(
                "Training-set intensity statistics: mean %.4f, std %.4f", preprocessing.dataset_mean, preprocessing.dataset_std
            )
        mean, std = preprocessing.dataset_mean, preprocessing.dataset_std
        return [dict(v, image=(v["image"] - mean) / std) for v in volumes]

    def _optimizer(self, stage: Stage) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        training = self.config.training
        parameters = [
            p
            for name, p in self.model.named_parameters()
            if p.requires_grad and (stage.calibration or not name.startswith("calibration."))
        ]
        optimizer = torch.optim.SGD(
            parameters, lr=training.learning_rate, momentum=training.momentum, weight_decay=training.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=training.lr_step, gamma=training.lr_gamma)
        return optimizer, scheduler

    def start_stage(self, stage: Stage) -> None:
        """Prepare the model for ``stage``: calibration on or off, fresh calibration weights in stage 2."""
        self.model.calibration_enabled = stage.calibration
        if stage.index == 2:
            # Stage 2 starts with newly initialised calibration weights, from a seed of its own.
            generator_state = torch.get_rng_state()
            torch.manual_seed(self.config.training.seed + 1)
            calibration = self.model.calibration
            if hasattr(calibration, "reset_parameters"):
                calibration.reset_parameters()
            else:
                for module in calibration.modules():
                    if isinstance(module, torch.nn.Linear):
                        module.reset_parameters()
            torch.set_rng_state(generator_state)

    def _state(self, step: int, stage: Stage, optimizer, scheduler) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "stage": stage.index,
            "calibration_enabled": self.model.calibration_enabled,
            "config": self.config.to_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def run(self, resume: bool = False) -> Path:
        """Train all stages (or the rest of them when resuming); returns the final checkpoint path.

        Raises:
            JapcError: the output folder cannot be written, ``resume`` without a checkpoint, or a
                NaN or infinite loss or weight (the last good checkpoint stays in place).
            CheckpointError: ``latest.pt`` is corrupt or does not fit the configured model.
        """
        ensure_writable_folder(self.output_dir)
        latest = self.checkpoint_dir / "latest.pt"
        step, stage_index, resumed_state = 0, self.stages[0].index, None
        if resume:
            if not latest.is_file():
                raise JapcError(f"Cannot resume: no checkpoint at {latest}. Start the run without --resume.")
            # Read before the preprocessing, so that a corrupt checkpoint stops the run at once.
            resumed_state = read_checkpoint(latest)
        self.volumes = self.load_volumes()
        atomic_write_text(self.output_dir / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
        if resumed_state is not None:
            self._restore(resumed_state, latest)
            step, stage_index = int(resumed_state["step"]), int(resumed_state["stage"])

        log_path = self.output_dir / "training_log.csv"
        final = self.checkpoint_dir / "final.pt"
        state = resumed_state
        for stage in self.stages:
            if step >= stage.stop:
                if resumed_state is not None and stage.index == stage_index == 1 and len(self.stages) > 1:
                    # The run was stopped at the end of stage 1, possibly before stage1.pt was written.
                    stage1 = self.checkpoint_dir / "stage1.pt"
                    if not stage1.is_file():
                        save_checkpoint(resumed_state, stage1)
                continue
            if resumed_state is not None and stage.index == stage_index:
                self.model.calibration_enabled = stage.calibration
                optimizer, scheduler = self._optimizer(stage)
                optimizer.load_state_dict(resumed_state["optimizer"])
                scheduler.load_state_dict(resumed_state["scheduler"])
            else:
                self.start_stage(stage)
                optimizer, scheduler = self._optimizer(stage)
            step = self._run_stage(stage, max(step, stage.start), optimizer, scheduler, log_path)
            state = self._state(step, stage, optimizer, scheduler)
            if stage.index == 1 and len(self.stages) > 1:
                save_checkpoint(state, self.checkpoint_dir / "stage1.pt")
        if state is None:
            raise JapcError(f"Nothing to train: the configuration plans no stage for {self.config.training.iterations} iterations.")
        save_checkpoint(state, final)
        logger.info("Training finished after %d steps; final checkpoint %s", step, final)
        return final

    def _restore(self, state: dict[str, Any], latest: Path) -> None:
        """Load the model weights and the random state of the checkpoint ``state`` read from ``latest``.

        Temporary files left by a save that was interrupted (for example by SIGKILL) are removed.
        """
        for leftover in self.checkpoint_dir.glob(".*.pt.*.tmp"):
            logger.info("Removing %s, left by an interrupted checkpoint save", leftover)
            leftover.unlink(missing_ok=True)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(
                f"Cannot resume from {latest}: its weights do not fit the model of the configuration "
                f"({str(error).splitlines()[0]}). Resume with the configuration of that run, or start a new "
                "run in another output_dir."
            ) from error
        self.model.to(self.device)
        torch.set_rng_state(state["torch_rng"])
        self.last_checkpoint_step = int(state["step"])
        logger.info("Resuming from %s at step %d (stage %d)", latest, int(state["step"]), int(state["stage"]))

    def _stop_message(self, problem: str, episode: dict[str, Any]) -> str:
        """Describe a NaN or infinite loss or weight and where the last good checkpoint is."""
        latest = self.checkpoint_dir / "latest.pt"
        if self.last_checkpoint_step is None:
            last_good = "No checkpoint of this run was written before that step"
        else:
            last_good = f"The last good checkpoint is {latest} (step {self.last_checkpoint_step})"
        return (
            f"The training {problem} (case {episode['case']}, slice {episode['slice_index']}); "
            f"training stopped. {last_good}. Lower training.learning_rate or check the intensity normalisation "
            "of the training images."
        )

    def _run_stage(self, stage: Stage, start: int, optimizer, scheduler, log_path: Path) -> int:
        training = self.config.training
        self.model.train()
        dataset = EpisodeDataset(self.volumes, stage.num_raters, stage.pseudo_styles, training.seed)
        loader = DataLoader(
            dataset,
            batch_size=None,
            sampler=range(start, stage.stop),
            num_workers=training.num_workers,
            persistent_workers=False,
        )
        weights = tuple(training.class_weights)
        sums: dict[str, float] = {}
        count = 0
        started = time.perf_counter()
        progress = tqdm(loader, total=stage.stop - start, desc=f"stage {stage.index}", unit="episode")
        step = start
        for episode in progress:
            terms = training_step(self.model, episode, weights, amp=training.amp)
            total = terms.total
            if not torch.isfinite(total):
                raise JapcError(self._stop_message(f"loss became {float(total.detach())} at step {step}", episode))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            step += 1

            values = terms.as_floats()
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            if step % training.log_every == 0 or step == stage.stop:
                means = {key: value / count for key, value in sums.items()}
                self._log(log_path, step, stage.index, scheduler.get_last_lr()[0], means, time.perf_counter() - started)
                progress.set_postfix(loss=f"{means['loss']:.4f}")
                sums, count = {}, 0
            if step % training.checkpoint_every == 0 or step == stage.stop:
                # A finite loss can still give non-finite weights (an infinite gradient); never save those.
                if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    problem = f"weights were NaN or infinite after step {step - 1}"
                    raise JapcError(self._stop_message(problem, episode))
                save_checkpoint(self._state(step, stage, optimizer, scheduler), self.checkpoint_dir / "latest.pt")
                self.last_checkpoint_step = step
        progress.close()
        return step

    @staticmethod
    def _log(path: Path, step: int, stage: int, lr: float, means: dict[str, float], elapsed: float) -> None:
        logger.info(
            "step %d stage %d lr %.2e loss %.4f (segmentation %.4f, alignment %.4f, calibration %.3e)",
            step, stage, lr, means["loss"], means["segmentation"], means["alignment"], means["calibration"],
        )
        new_file = not path.exists()
        with path.open("a", newline="") as stream:
            writer = csv.writer(stream)
            if new_file:
                writer.writerow(["step", "stage", "lr", "loss", "segmentation", "alignment", "calibration", "seconds"])
            writer.writerow(
                [step, stage, f"{lr:.6g}"]
                + [f"{means[k]:.6g}" for k in ("loss", "segmentation", "alignment", "calibration")]
                + [f"{elapsed:.1f}"]
            )


def exclude_slices_with_classes(volume: dict[str, Any], class_values: list[int]) -> dict[str, Any]:
    """Remove the superpixels of every slice where any rater labels one of ``class_values``.

    Such slices can then never be drawn for an episode (setting 2 of the evaluation protocol).
    """
    label = volume["label"]
    hit = torch.zeros(label.shape[-1], dtype=torch.bool)
    for value in class_values:
        hit |= (label == value).flatten(0, -2).any(dim=0)
    superpixels = volume["superpixels"].clone()
    superpixels[..., hit] = 0
    return dict(volume, superpixels=superpixels, excluded_slices=int(hit.sum()))


def train(config: RunConfig, resume: bool = False) -> Path:
    """Train with :class:`EpisodicTrainer`; returns the final checkpoint path."""
    started = time.perf_counter()
    path = EpisodicTrainer(config).run(resume=resume)
    logger.info("Training took %.1f s", time.perf_counter() - started)
    return path
