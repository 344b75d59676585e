"""Infer tasks of the japc MONAI Label app."""

from __future__ import annotations

from lib.infers.japc_multirater import JapcMultiRaterInfer

__all__ = ["JapcMultiRaterInfer"]
