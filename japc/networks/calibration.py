"""Rater prototype calibration: joint attention (JAPC), the scalar gate, and none.

For one class (background or foreground) and R raters, each rater r has prototypes ``P_r``
``[N_r, C]`` pooled with its own support mask, and all raters share a consensus prototype
``p_0`` pooled with the mean of the R masks. The deviation of a prototype is ``D = P - p_0``.

- ``attention`` (the JAPC paper's form): the prototypes of all raters are stacked into
  ``P`` ``[N, C]`` with ``N = sum_r N_r``, and every prototype attends over the deviations of all
  raters: ``Q = P Wq``, ``K = D Wk``, ``V = D Wv``, ``P~ = P + softmax(Q K^T / sqrt(d)) V``.
- ``gate`` (the form of the authors' released code): a scalar per prototype,
  ``w_i = sigmoid(<Wq p_i, Wk d_i> / sqrt(d))`` and ``P~_i = w_i P_i``. Every score of the cosine
  classifier is invariant to a positive scale, so this form leaves predictions unchanged and acts
  on training only through the calibration loss.
- ``none``: ``P~ = P``.

The calibration loss is ``mean((P~ - P)^2)`` over the stacked prototypes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from japc.errors import ConfigError

__all__ = [
    "CALIBRATION_MODES",
    "PrototypeCalibration",
    "JointAttentionCalibration",
    "GateCalibration",
    "IdentityCalibration",
    "build_calibration",
]

CALIBRATION_MODES = ("attention", "gate", "none")


class PrototypeCalibration(nn.Module):
    """Base class: calibrate the prototypes of all raters for one class."""

    def forward(
        self, rater_prototypes: list[torch.Tensor], consensus: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Calibrate the prototypes of every rater jointly.

        Args:
            rater_prototypes: R tensors ``[N_r, C]`` (``N_r`` may be 0 for an empty mask).
            consensus: consensus prototype ``[C]``.

        Returns:
            The calibrated prototypes (same shapes as the input) and the calibration loss
            ``mean((P~ - P)^2)``, a scalar tensor (0 when there is no prototype).
        """
        counts = [p.shape[0] for p in rater_prototypes]
        stacked = torch.cat(rater_prototypes, dim=0)
        if stacked.shape[0] == 0:
            return list(rater_prototypes), stacked.new_zeros(())
        calibrated = self.calibrate(stacked, stacked - consensus.unsqueeze(0))
        loss = torch.mean((calibrated - stacked) ** 2)
        return list(torch.split(calibrated, counts, dim=0)), loss

    def calibrate(self, prototypes: torch.Tensor, deviations: torch.Tensor) -> torch.Tensor:
        """Map stacked prototypes ``[N, C]`` and their deviations ``[N, C]`` to ``[N, C]``."""
        raise NotImplementedError


class JointAttentionCalibration(PrototypeCalibration):
    """Joint attention of every rater prototype over the deviations of all raters.

    With ``zero_init_values`` (the default), ``Wv`` starts at zero, so a freshly initialised
    module is the identity. Stage 2 of the two-stage schedule then starts from exactly the
    stage-1 predictions, and the gradient reaches ``Wv`` first and ``Wq``, ``Wk`` once ``Wv``
    has moved. Otherwise all three start with PyTorch's default ``nn.Linear`` initialisation.

    Args:
        channels: prototype dimension C.
        attention_dim: query/key dimension d.
        zero_init_values: start ``Wv`` at zero (identity calibration).
    """

    def __init__(self, channels: int, attention_dim: int = 64, zero_init_values: bool = True) -> None:
        super().__init__()
        self.attention_dim = attention_dim
        self.zero_init_values = zero_init_values
        self.query = nn.Linear(channels, attention_dim, bias=False)
        self.key = nn.Linear(channels, attention_dim, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the projections; ``Wv`` is zero when ``zero_init_values`` is set."""
        for linear in (self.query, self.key, self.value):
            linear.reset_parameters()
        if self.zero_init_values:
            nn.init.zeros_(self.value.weight)

    def calibrate(self, prototypes: torch.Tensor, deviations: torch.Tensor) -> torch.Tensor:
        queries = self.query(prototypes)
        keys = self.key(deviations)
        values = self.value(deviations)
        attention = torch.softmax(queries @ keys.t() / math.sqrt(self.attention_dim), dim=-1)
        return prototypes + attention @ values


class GateCalibration(PrototypeCalibration):
    """Scalar sigmoid gate per prototype, as in the authors' released code.

    Args:
        channels: prototype dimension C.
        attention_dim: query/key dimension d.
    """

    def __init__(self, channels: int, attention_dim: int = 64) -> None:
        super().__init__()
        self.attention_dim = attention_dim
        self.query = nn.Linear(channels, attention_dim, bias=False)
        self.key = nn.Linear(channels, attention_dim, bias=False)

    def calibrate(self, prototypes: torch.Tensor, deviations: torch.Tensor) -> torch.Tensor:
        scores = (self.query(prototypes) * self.key(deviations)).sum(dim=-1, keepdim=True)
        return torch.sigmoid(scores / math.sqrt(self.attention_dim)) * prototypes


class IdentityCalibration(PrototypeCalibration):
    """No calibration: every rater keeps its own prototypes and the loss is zero."""

    def calibrate(self, prototypes: torch.Tensor, deviations: torch.Tensor) -> torch.Tensor:
        return prototypes


def build_calibration(
    mode: str, channels: int, attention_dim: int = 64, zero_init_values: bool = True
) -> PrototypeCalibration:
    """Create the calibration module for ``mode`` (``attention``, ``gate`` or ``none``)."""
    if mode == "attention":
        return JointAttentionCalibration(channels, attention_dim, zero_init_values)
    if mode == "gate":
        return GateCalibration(channels, attention_dim)
    if mode == "none":
        return IdentityCalibration()
    raise ConfigError(f"Unknown calibration mode {mode!r}; valid modes are {', '.join(CALIBRATION_MODES)}.")
