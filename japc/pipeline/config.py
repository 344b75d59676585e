"""Run configuration: data, preprocessing, model and training settings read from YAML or JSON.

A configuration file has four sections (``data``, ``preprocessing``, ``model``, ``training``)
plus ``output_dir``. Every key has a default, so a file only lists what it changes.
Relative paths (``data.datalist``, ``output_dir``) resolve against the current working
directory, like every path given on the command line. Command-line overrides use dotted
keys, e.g. ``--set training.iterations=200 model.calibration=none``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from japc.errors import ConfigError

__all__ = [
    "DataConfig",
    "PreprocessingConfig",
    "ModelConfig",
    "TrainingConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
]


@dataclass
class DataConfig:
    """Source of the training images.

    Attributes:
        datalist: multi-rater datalist JSON file.
        split: datalist split used for self-supervised training. Its labels are only read in
            setting 2, to find the slices to drop.
        test_classes: class names evaluated as unseen classes (evaluation defaults to them).
        setting: 1 (test classes may appear unlabelled in training images) or 2 (every training
            slice where any rater labels a test class is dropped).
    """

    datalist: str = ""
    split: str = "training"
    test_classes: list[str] = field(default_factory=list)
    setting: int = 1


@dataclass
class PreprocessingConfig:
    """Deterministic preprocessing shared by training, evaluation and inference.

    Attributes:
        intensity: intensity normalisation; ``mode`` is one of ``ct_window``, ``mr_percentile``,
            ``zscore``, ``minmax``, ``none``, and the other keys are that mode's parameters.
        spatial_size: in-plane size ``[H, W]`` of the slices fed to the network, in pixels.
        orientation: axis codes the volumes are reoriented to before slicing (last axis = slices).
        border_crop: pixels removed from each in-plane border before resizing (32 for CURVAS).
        slice_spacing: slice thickness in mm that volumes are resampled to along the slice
            axis (3 for CURVAS); None keeps the original slices.
        dataset_zscore: after ``intensity``, subtract the training set's mean intensity and
            divide by its standard deviation (computed once by ``japc train`` and stored in the
            checkpoint's configuration).
        dataset_mean: training-set mean used by ``dataset_zscore``.
        dataset_std: training-set standard deviation used by ``dataset_zscore``.
        body_mask_threshold: intensity threshold of the body mask, applied after normalisation;
            None uses the whole slice.
        superpixel_min_size: Felzenszwalb ``min_size`` in pixels.
        superpixel_sigma: Felzenszwalb Gaussian pre-smoothing sigma in pixels.
        superpixel_scale: Felzenszwalb ``scale``.
    """

    intensity: dict[str, Any] = field(default_factory=lambda: {"mode": "zscore"})
    spatial_size: list[int] = field(default_factory=lambda: [256, 256])
    orientation: str = "RAS"
    border_crop: int = 0
    slice_spacing: float | None = None
    dataset_zscore: bool = False
    dataset_mean: float | None = None
    dataset_std: float | None = None
    body_mask_threshold: float | None = None
    superpixel_min_size: int = 400
    superpixel_sigma: float = 1.0
    superpixel_scale: float = 1.0


@dataclass
class ModelConfig:
    """Network architecture.

    Attributes:
        encoder: encoder name (``deeplabv3_resnet101`` is the paper's setting).
        output_stride: encoder output stride (8 in the paper).
        feature_channels: channels of the 1x1 projection after the encoder (256 in the paper).
        pretrained: local file with backbone weights (``imagenet`` for the EfficientNet-Lite0
            weights installed with the package); None for random initialisation.
        head: prototype head, ``alpnet`` or ``dspnet``.
        calibration: ``attention`` (JAPC), ``gate`` (released-code form) or ``none``.
        attention_dim: query/key dimension of the calibration module.
        train_window: ALP pooling window in training, in feature pixels.
        test_window: ALP pooling window at test time, in feature pixels.
        mask_resize: how support masks shrink to the feature size: ``area`` (default; keeps the
            covered fraction, so rater outlines that differ by a few pixels still give different
            prototypes) or ``bilinear`` (the reference implementation's point sampling, which can
            turn a small mask into an empty one and leave a rater without prototypes).
        calibration_init: start of the attention calibration in stage 2: ``identity`` (``Wv`` at
            zero, so stage 2 starts from the stage-1 predictions) or ``random`` (PyTorch's default
            initialisation of every projection).
    """

    encoder: str = "resnet18"
    output_stride: int = 8
    feature_channels: int = 256
    pretrained: str | None = None
    head: str = "alpnet"
    calibration: str = "attention"
    attention_dim: int = 64
    train_window: int = 4
    test_window: int = 2
    mask_resize: str = "area"
    calibration_init: str = "identity"


@dataclass
class TrainingConfig:
    """Episodic self-supervised training.

    Attributes:
        iterations: total number of episodes (one episode per optimiser step).
        stage1_iterations: episodes of stage 1 (base network, one rater, no calibration);
            the remaining ones are stage 2 (calibration and pseudo-styles, fresh optimiser).
            None (default) takes half of ``iterations``, as in the paper's schedules.
            Ignored when the calibration mode is ``none`` and ``pseudo_styles`` is false: the
            base network then trains for all iterations in one stage.
        num_raters: pseudo-style raters per stage-2 episode.
        pseudo_styles: generate pseudo-styles in stage 2.
        learning_rate: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_step: iterations between learning-rate decays.
        lr_gamma: learning-rate decay factor.
        class_weights: background and foreground cross-entropy weights.
        checkpoint_every: iterations between checkpoints.
        log_every: iterations between logged loss averages.
        num_workers: data-loader worker processes.
        seed: random seed of the run.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
    """

    iterations: int = 2000
    stage1_iterations: int | None = None
    num_raters: int = 3
    pseudo_styles: bool = True
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 1000
    lr_gamma: float = 0.95
    class_weights: list[float] = field(default_factory=lambda: [0.05, 1.0])
    checkpoint_every: int = 500
    log_every: int = 50
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = False


@dataclass
class RunConfig:
    """Complete configuration of a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output_dir: str = "runs/japc"

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain Python types (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @property
    def stage1_stop(self) -> int:
        """Episode index at which stage 2 starts."""
        stage1 = self.training.stage1_iterations
        return self.training.iterations // 2 if stage1 is None else stage1


logger = logging.getLogger(__name__)

_SECTIONS = {
    "data": DataConfig,
    "preprocessing": PreprocessingConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
}


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Configuration file not found: {path}. Check the path.")
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"Cannot read configuration file {path}: {error}") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"Configuration file {path} must contain a mapping of sections, not {type(content).__name__}.")
    return content


def _apply_override(content: dict[str, Any], override: str, source: str) -> None:
    key, separator, raw_value = override.partition("=")
    if not separator or not key:
        raise ConfigError(f"Invalid override {override!r}; write it as section.key=value, e.g. training.iterations=200.")
    parts = key.split(".")
    if parts != ["output_dir"]:
        section = _SECTIONS.get(parts[0])
        if section is None or len(parts) != 2:
            raise ConfigError(
                f"Invalid override key {key!r} in --set {override!r}; use section.key with a section among "
                f"{sorted(_SECTIONS)}, or output_dir."
            )
        valid = {f.name for f in dataclasses.fields(section)}
        if parts[1] not in valid:
            raise ConfigError(
                f"Unknown key {parts[1]!r} in --set {override!r}; valid keys of section {parts[0]!r} are {sorted(valid)}."
            )
    value = yaml.safe_load(raw_value) if raw_value else None
    target = content
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"Invalid override {override!r} in {source}: {part!r} is not a section.")
    target[parts[-1]] = value


def config_from_dict(content: dict[str, Any], source: str = "<config>", ignore_unknown: bool = False) -> RunConfig:
    """Build a :class:`RunConfig` from a nested mapping, rejecting unknown keys.

    Args:
        content: mapping with optional sections ``data``, ``preprocessing``, ``model``,
            ``training`` and key ``output_dir``.
        source: file name used in error messages.
        ignore_unknown: drop unknown keys with a warning instead of raising (for the
            configuration stored in a checkpoint written by another japc version).

    Raises:
        ConfigError: unknown section or key, or a value of the wrong type.
    """
    content = copy.deepcopy(content)
    unknown = set(content) - set(_SECTIONS) - {"output_dir"}
    if unknown and ignore_unknown:
        logger.warning("Ignoring unknown configuration section(s) %s in %s", sorted(unknown), source)
        content = {k: v for k, v in content.items() if k not in unknown}
        unknown = set()
    if unknown:
        raise ConfigError(
            f"Unknown configuration section(s) {sorted(unknown)} in {source}; "
            f"valid sections are {sorted(_SECTIONS)} and output_dir."
        )
    sections: dict[str, Any] = {}
    for name, section_type in _SECTIONS.items():
        values = content.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"Section {name!r} in {source} must be a mapping, not {values!r}.")
        valid = {f.name for f in dataclasses.fields(section_type)}
        unknown_keys = set(values) - valid
        if unknown_keys and ignore_unknown:
            logger.warning("Ignoring unknown key(s) %s in section %r of %s", sorted(unknown_keys), name, source)
            values = {k: v for k, v in values.items() if k in valid}
            unknown_keys = set()
        if unknown_keys:
            raise ConfigError(
                f"Unknown key(s) {sorted(unknown_keys)} in section {name!r} of {source}; "
                f"valid keys are {sorted(valid)}."
            )
        sections[name] = section_type(**values)
    config = RunConfig(**sections, output_dir=str(content.get("output_dir", RunConfig.output_dir)))
    if config.data.datalist:
        config.data.datalist = str(Path(config.data.datalist).resolve())
    config.output_dir = str(Path(config.output_dir).resolve())
    _validate(config, source)
    return config


def _validate(config: RunConfig, source: str) -> None:
    training = config.training
    if training.iterations < 1:
        raise ConfigError(f"training.iterations must be at least 1 in {source}, got {training.iterations}.")
    if not 0 <= config.stage1_stop <= training.iterations:
        raise ConfigError(
            f"training.stage1_iterations must lie in [0, iterations={training.iterations}] in {source}, "
            f"got {training.stage1_iterations}."
        )
    if training.num_raters < 1:
        raise ConfigError(f"training.num_raters must be at least 1 in {source}, got {training.num_raters}.")
    if len(config.preprocessing.spatial_size) != 2 or min(config.preprocessing.spatial_size) < 8:
        raise ConfigError(
            f"preprocessing.spatial_size must be two sizes of at least 8 pixels in {source}, "
            f"got {config.preprocessing.spatial_size}."
        )
    if config.preprocessing.border_crop < 0:
        raise ConfigError(f"preprocessing.border_crop must be 0 or more pixels in {source}, got {config.preprocessing.border_crop}.")
    if config.preprocessing.slice_spacing is not None and config.preprocessing.slice_spacing <= 0:
        raise ConfigError(f"preprocessing.slice_spacing must be positive (mm) in {source}, got {config.preprocessing.slice_spacing}.")
    if "mode" not in config.preprocessing.intensity:
        raise ConfigError(f"preprocessing.intensity needs a 'mode' key in {source}, got {config.preprocessing.intensity}.")
    if config.model.calibration_init not in ("identity", "random"):
        raise ConfigError(
            f"model.calibration_init must be identity or random in {source}, got {config.model.calibration_init!r}."
        )
    if config.data.setting not in (1, 2):
        raise ConfigError(f"data.setting must be 1 or 2 in {source}, got {config.data.setting}.")
    if config.data.setting == 2 and not config.data.test_classes:
        raise ConfigError(f"data.setting 2 in {source} needs data.test_classes, the classes to keep out of training.")
    if len(training.class_weights) != 2:
        raise ConfigError(f"training.class_weights must list two weights in {source}, got {training.class_weights}.")


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML or JSON run configuration and apply dotted ``key=value`` overrides.

    Raises:
        ConfigError: unreadable file, unknown key or invalid value.
    """
    path = Path(path)
    content = _read_file(path)
    for override in overrides or []:
        _apply_override(content, override, str(path))
    return config_from_dict(content, source=str(path))
