"""Components of the MONAI bundle ``bundles/japc_multirater``, under one dotted path.

The bundle's configuration files name their japc components as ``japc.pipeline.bundle.<name>``
(an installed package, so MONAI's ``ConfigWorkflow`` finds them before it adds the bundle
folder to ``sys.path``). They live in four modules, one per concept:

- :mod:`japc.pipeline.bundle_config`: run configurations and networks from the bundle's
  settings and from checkpoints;
- :mod:`japc.pipeline.bundle_training`: the episodic trainer, its loss module, japc's
  checkpoint layout for MONAI's ``CheckpointSaver``, an atomic ``CheckpointSaver`` and the
  engine handler that stops on japc's errors without a traceback;
- :mod:`japc.pipeline.bundle_metrics`: per-rater Dice for ``IgniteMetricHandler`` and japc's
  Dice tables;
- :mod:`japc.pipeline.bundle_evaluation` and :mod:`japc.pipeline.bundle_inference`: the
  support/query items, inferers, query loading and per-rater mask writing.

Distributed helpers are in :mod:`japc.pipeline.ddp`.
"""

from __future__ import annotations

from japc.pipeline.bundle_config import build_network, bundle_run_config, checkpoint_run_config, load_checkpoint_state
from japc.pipeline.bundle_evaluation import SupportQueryInferer, SupportQueryPairs, unwrap_segmenter
from japc.pipeline.bundle_inference import (
    AtomicNibabelWriter,
    LoadQueryd,
    SaveRaterMasksd,
    SupportSetInferer,
    query_datalist,
    rater_ids,
)
from japc.pipeline.bundle_metrics import DiceTableSaver, PerRaterDiceMetric, pair_metadata, pair_name, per_rater_dice
from japc.pipeline.bundle_training import (
    AtomicCheckpointSaver,
    EpisodeLoss,
    EpisodeTrainer,
    JapcCheckpoint,
    JapcErrorHandler,
    LatestCheckpoint,
    ResumeState,
    TrainingStageSetup,
    episode_loader,
    loss_terms,
    stage_parameters,
    training_stage,
)

__all__ = [
    "load_checkpoint_state",
    "bundle_run_config",
    "checkpoint_run_config",
    "build_network",
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
    "per_rater_dice",
    "PerRaterDiceMetric",
    "DiceTableSaver",
    "pair_name",
    "pair_metadata",
    "unwrap_segmenter",
    "SupportQueryPairs",
    "SupportQueryInferer",
    "rater_ids",
    "query_datalist",
    "LoadQueryd",
    "SupportSetInferer",
    "AtomicNibabelWriter",
    "SaveRaterMasksd",
]
