"""Episodic two-stage training on MONAI's Ignite engines, for the bundle's ``train.json``.

Each bundle run trains one stage of :func:`japc.pipeline.training.plan_stages`. The pieces
reuse ``japc train``: the network is built and (in stage 2) restarted exactly as
:class:`~japc.pipeline.training.EpisodicTrainer` does, episodes come from
:class:`~japc.pipeline.training.EpisodeDataset` (item ``i`` is the episode of step ``i``), the
loss is :func:`~japc.pipeline.training.training_step`, and checkpoints have japc's layout, so
``japc evaluate`` and ``japc infer`` read them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from torch import nn
from torch.utils.data import DataLoader

from japc.errors import ConfigError, JapcError, find_japc_error
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.checkpoints import CHECKPOINT_FORMAT_VERSION, read_checkpoint, save_checkpoint
from japc.pipeline.config import RunConfig
from japc.pipeline.ddp import EpisodeStepSampler, is_distributed, rank, world_size
from japc.pipeline.training import EpisodeDataset, EpisodicTrainer, Stage, plan_stages, training_step

__all__ = [
    "training_stage",
    "TrainingStageSetup",
    "stage_parameters",
    "EpisodeLoss",
    "episode_loader",
    "EpisodeTrainer",
    "JapcCheckpoint",
    "AtomicCheckpointSaver",
    "JapcErrorHandler",
    "LatestCheckpoint",
    "ResumeState",
    "loss_terms",
]

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "segmentation", "alignment", "calibration")


def training_stage(config: RunConfig, stage: int) -> Stage:
    """Return stage ``stage`` (1 or 2) of the schedule that :func:`plan_stages` makes for ``config``."""
    for planned in plan_stages(config):
        if planned.index == stage:
            return planned
    planned_indices = [planned.index for planned in plan_stages(config)]
    raise ConfigError(f"The run configuration plans no stage {stage}; it plans stage(s) {planned_indices}.")


class TrainingStageSetup:
    """The network and the episodes of one stage, set up exactly as ``japc train`` sets them up.

    The network is initialised from ``training.seed``. Stage 2 then loads the stage-1 weights
    and re-initialises the calibration module from ``seed + 1``. In stage 1 the calibration
    parameters are frozen (they are neither used nor optimised), so that
    ``DistributedDataParallel`` finds no parameter without a gradient.

    Args:
        config: run configuration (:func:`~japc.pipeline.bundle_config.bundle_run_config`).
        stage: 1 or 2.
        stage1_checkpoint: checkpoint written by stage 1 (stage 2 only).
        resume_checkpoint: a stage checkpoint written by :class:`LatestCheckpoint` to continue
            from, or None to start the stage afresh.

    Attributes:
        stage: the stage's :class:`Stage` (step range, raters, calibration). When resuming,
            ``start`` is the next step to draw.
        network: the segmenter to train.
        resume_state: the checkpoint being resumed (optimiser, scheduler and random state for
            :class:`ResumeState`), or None.
        completed_iterations: optimiser steps of this process already done in the stage.
    """

    def __init__(
        self,
        config: RunConfig,
        stage: int,
        stage1_checkpoint: str | None = None,
        resume_checkpoint: str | None = None,
    ) -> None:
        self.config = config
        self.stage = training_stage(config, stage)
        if stage == 2 and stage1_checkpoint is None:
            raise ConfigError("Stage 2 starts from the stage-1 checkpoint; give its path (--stage1_checkpoint).")
        self._trainer = EpisodicTrainer(config)
        if stage == 2:
            self._trainer.model.load_state_dict(read_checkpoint(stage1_checkpoint)["model"])
        self._trainer.start_stage(self.stage)
        self.network = self._trainer.model
        if not self.stage.calibration:
            for parameter in self.network.calibration.parameters():
                parameter.requires_grad_(False)
        self.resume_state: dict[str, Any] | None = None
        self.completed_iterations = 0
        if resume_checkpoint is not None:
            self._resume(Path(resume_checkpoint))

    def _resume(self, path: Path) -> None:
        """Load the weights of ``path`` and move the stage's start to its next step."""
        if not path.is_file():
            raise ConfigError(
                f"Cannot resume: no checkpoint at {path}. Run the stage without --resume True, "
                "or give the --bundle_root of the interrupted run."
            )
        state = read_checkpoint(path)
        if int(state["stage"]) != self.stage.index:
            raise ConfigError(
                f"Cannot resume stage {self.stage.index} from {path}, which is a stage-{state['stage']} checkpoint."
            )
        done = int(state["step"]) - self.stage.start
        processes = world_size()
        if done < 0 or done % processes != 0:
            raise ConfigError(
                f"Cannot resume from {path}: its step {state['step']} does not continue stage {self.stage.index} "
                f"(first step {self.stage.start}) with {processes} process(es). Resume with the number of "
                "processes of the interrupted run."
            )
        self.network.load_state_dict(state["model"])
        self.resume_state = state
        self.completed_iterations = done // processes
        self.stage = dataclasses.replace(self.stage, start=int(state["step"]))
        logger.info("Resuming stage %d from %s at step %d", self.stage.index, path, self.stage.start)

    def remaining_iterations(self, iterations: int) -> int:
        """Optimiser steps of this process still to do out of the stage's ``iterations``."""
        remaining = int(iterations) - self.completed_iterations
        if remaining <= 0 and self.resume_state is not None:
            raise ConfigError(
                f"Stage {self.stage.index} already completed its {iterations} iterations in the resumed "
                f"checkpoint (step {self.stage.start}); there is nothing to resume. Its weights are final."
            )
        return max(0, remaining)

    def dataset(self) -> EpisodeDataset:
        """Preprocess the training volumes (through japc's cache) and wrap them as the stage's episodes.

        In a process group, rank 0 fills the preprocessing cache while the other ranks wait,
        then they read it.
        """
        if is_distributed() and rank() != 0:
            dist.barrier()
        volumes = self._trainer.load_volumes()
        if is_distributed() and rank() == 0:
            dist.barrier()
        training = self.config.training
        return EpisodeDataset(volumes, self.stage.num_raters, self.stage.pseudo_styles, training.seed)


def stage_parameters(network: nn.Module, calibration: bool) -> list[nn.Parameter]:
    """Return the parameters that a stage optimises: all trainable ones, calibration only if ``calibration``."""
    return [
        parameter
        for name, parameter in network.named_parameters()
        if parameter.requires_grad and (calibration or not name.startswith("calibration."))
    ]


class EpisodeLoss(nn.Module):
    """Loss terms of one training episode, computed in ``forward``.

    ``DistributedDataParallel`` averages gradients only for work done in the ``forward`` of
    the module it wraps. The alignment loss needs the segmenter's features, so the whole
    :func:`training_step` runs here.

    Args:
        segmenter: the network being trained.
        class_weights: background and foreground weights of the query cross-entropy.
        amp: bfloat16 autocast on CUDA devices, as ``training.amp`` of ``japc train``; no effect
            on the CPU.
    """

    def __init__(
        self, segmenter: FewShotSegmenter, class_weights: tuple[float, float] | list[float], amp: bool = False
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.class_weights = tuple(float(w) for w in class_weights)
        self.amp = amp

    def forward(self, episode: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return the ``segmentation``, ``alignment`` and ``calibration`` losses (scalar tensors)."""
        terms = training_step(self.segmenter, episode, self.class_weights, amp=self.amp)
        return {"segmentation": terms.segmentation, "alignment": terms.alignment, "calibration": terms.calibration}


def episode_loader(dataset: EpisodeDataset, stage: Stage, iterations: int, num_workers: int = 0) -> DataLoader:
    """Load the episodes of this process: ``iterations`` steps from ``stage.start`` (see :class:`EpisodeStepSampler`)."""
    sampler = EpisodeStepSampler(stage.start, iterations)
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=num_workers, persistent_workers=False)


class EpisodeTrainer(SupervisedTrainer):
    """MONAI trainer whose iteration is one japc training episode.

    ``network`` is an :class:`EpisodeLoss` (or ``DistributedDataParallel`` around one). Each
    iteration moves the episode to the device, computes the loss terms, checks that their sum
    is finite, and takes one optimiser step. ``engine.state.output`` contains the terms as
    detached tensors (``loss`` is their sum), the learning rate (``lr``) and the episode's
    ``step``, ``case`` and ``slice_index``. The learning-rate scheduler is stepped by MONAI's
    ``LrScheduleHandler``.

    Mixed precision is :class:`EpisodeLoss`'s ``amp`` (bfloat16 autocast on CUDA only, which
    needs no gradient scaling). The engine's own ``amp`` stays off, because MONAI's engines
    assume float16 CUDA autocast.

    Args:
        device: device of the network.
        train_data_loader: episodes, one per iteration (:func:`episode_loader`).
        network: :class:`EpisodeLoss` or ``DistributedDataParallel`` around one.
        optimizer: optimiser of the stage's parameters.
        train_handlers: Ignite handlers (statistics, checkpoints, validation, ...).
        max_epochs: passes over ``train_data_loader`` (1: the loader yields the whole stage).
        epoch_length: iterations per epoch; None for the loader's length.
        non_blocking: asynchronous copies to the device.
    """

    def __init__(
        self,
        device: str | torch.device,
        train_data_loader: DataLoader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_handlers: list | None = None,
        max_epochs: int = 1,
        epoch_length: int | None = None,
        non_blocking: bool = False,
    ) -> None:
        super().__init__(
            device=torch.device(device),
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=None,  # the loss is the network's output, see EpisodeLoss
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            train_handlers=train_handlers,
            amp=False,
            decollate=False,
        )

    def _iteration(self, engine: EpisodeTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        episode = {
            key: value.to(engine.state.device, non_blocking=engine.non_blocking)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in batchdata.items()
        }

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        terms = engine.network(episode)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        total = terms["segmentation"] + terms["alignment"] + terms["calibration"]
        if not torch.isfinite(total):
            raise JapcError(
                f"The training loss became {float(total.detach())} at step {episode['step']} (case {episode['case']}, slice "
                f"{episode['slice_index']}); training stopped. Lower --japc#training#learning_rate or check the "
                "intensity normalisation of the training images."
            )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        output: dict[str, Any] = {"loss": total.detach()}
        output.update({key: value.detach() for key, value in terms.items()})
        output.update(
            lr=engine.optimizer.param_groups[0]["lr"],
            step=episode["step"],
            case=episode["case"],
            slice_index=episode["slice_index"],
        )
        return output


def loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """Select the loss terms and the learning rate of a trainer output, for Stats and TensorBoard handlers."""
    values = {key: float(output[key]) for key in LOSS_KEYS}
    values["lr"] = float(output["lr"])
    return values


class JapcCheckpoint:
    """The state of a bundle training run in japc's checkpoint layout, for MONAI's ``CheckpointSaver``.

    ``state_dict()`` returns the dictionary that ``japc train`` writes: ``model``, ``optimizer``,
    ``scheduler``, ``step``, ``stage``, ``calibration_enabled``, ``config`` and ``torch_rng``.
    Given as the only entry of ``CheckpointSaver(save_dict=...)``, it becomes the whole file.
    Attach it to the trainer (list it among the trainer's handlers), so that it can read the step.

    Args:
        network: the segmenter being trained (not a wrapper).
        optimizer: the stage's optimiser.
        lr_scheduler: the stage's learning-rate scheduler.
        config: the run configuration.
        stage: the stage being trained.
    """

    def __init__(
        self,
        network: FewShotSegmenter,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: RunConfig,
        stage: Stage,
    ) -> None:
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.config = config
        self.stage = stage
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Remember the trainer whose iteration count gives the step."""
        self._engine = engine

    @property
    def step(self) -> int:
        """Episodes drawn so far in the run, over all processes: the next step index."""
        if self._engine is None:
            raise JapcError("JapcCheckpoint is not attached to the trainer; list it in train#handlers.")
        return self.stage.start + int(self._engine.state.iteration) * world_size()

    def state_dict(self) -> dict[str, Any]:
        """Return the checkpoint dictionary (tensors and plain values only)."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "step": self.step,
            "stage": self.stage.index,
            "calibration_enabled": self.network.calibration_enabled,
            "config": self.config.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "format_version": CHECKPOINT_FORMAT_VERSION,
        }


class LatestCheckpoint:
    """Save the training state every ``interval`` iterations to one file, for ``--resume True``.

    The file is written through :func:`save_checkpoint` (temporary file, then rename), so a
    process killed while saving leaves the previous checkpoint. Only rank 0 saves.

    Args:
        checkpoint: the run's :class:`JapcCheckpoint`.
        path: checkpoint file, replaced at every save.
        interval: iterations between saves; 0 disables saving.
    """

    def __init__(self, checkpoint: JapcCheckpoint, path: str | Path, interval: int) -> None:
        if int(interval) < 0:
            raise ConfigError(f"The checkpoint interval must be 0 or more iterations, got {interval}.")
        self.checkpoint = checkpoint
        self.path = Path(path)
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        """Register the save for every ``interval``-th completed iteration (on rank 0)."""
        if self.interval > 0 and rank() == 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)

    def save(self, engine: Engine) -> None:
        """Write the current state to :attr:`path`."""
        save_checkpoint(self.checkpoint.state_dict(), self.path)


class ResumeState:
    """Restore the optimiser, the scheduler and torch's random state of a resumed stage.

    Attach it to the trainer after the optimiser and the scheduler are built, because building a
    ``StepLR`` resets the optimiser's learning rate and would undo a state loaded before it.
    Without a resumed checkpoint it does nothing.

    Args:
        setup: the stage's :class:`TrainingStageSetup`.
        optimizer: the stage's optimiser.
        lr_scheduler: the stage's learning-rate scheduler.
    """

    def __init__(
        self,
        setup: TrainingStageSetup,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        self.setup = setup
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def attach(self, engine: Engine) -> None:
        """Load the saved states now, before the first iteration."""
        state = self.setup.resume_state
        if state is None:
            return
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])


class _AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler that writes through :func:`save_checkpoint` (temporary file, fsync, rename).

    Args:
        dirname: folder of the checkpoint files.
        filename: fixed file name that replaces the one Ignite chooses, or None.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        save_checkpoint(dict(checkpoint), self.dirname / (self.filename or filename))

    def remove(self, filename: str) -> None:
        # Ignite removes the previous file before it saves the next. A fixed name is replaced by
        # that save, so keeping the previous file until then leaves a checkpoint at every moment.
        if self.filename is None:
            (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written to a temporary name and then renamed.

    MONAI 1.6.1 builds its savers with Ignite's ``DiskSaver(atomic=False)``, so a process killed
    while saving leaves a truncated file in place of the previous checkpoint. This subclass
    takes the same arguments and writes every file through japc's :func:`save_checkpoint`. A
    fixed file name (``final_filename``, ``key_metric_filename``) keeps the previous file until
    the new one replaces it.

    NOTE: it replaces the ``save_handler`` of the private ``_final_checkpoint``,
    ``_key_metric_checkpoint`` and ``_interval_checkpoint`` attributes of MONAI 1.6.1.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed_name = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, fixed_name)


class JapcErrorHandler:
    """Stop an engine on a :class:`JapcError` without the traceback that MONAI's ``StatsHandler`` logs.

    Ignite calls the ``EXCEPTION_RAISED`` handlers in order and stops at the first that raises,
    so list this handler before ``StatsHandler``. An error caused by a :class:`JapcError` is
    re-raised as it is: Ignite has already logged its message, and the bundle's exception hook
    (:func:`japc.errors.install_excepthook`) prints it as one line. Any other error is logged
    with its traceback, as ``StatsHandler`` does, and re-raised.
    """

    def attach(self, engine: Engine) -> None:
        """Register the handler for ``Events.EXCEPTION_RAISED``."""
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def exception_raised(self, engine: Engine, error: Exception) -> None:
        """Re-raise ``error``; log its traceback first unless a :class:`JapcError` caused it."""
        if find_japc_error(error) is None:
            logger.exception("Exception: %s", error)
        raise error
