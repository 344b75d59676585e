"""japc: few-shot multi-rater medical image segmentation with prototype calibration."""

from __future__ import annotations

__version__ = "0.1.0"
