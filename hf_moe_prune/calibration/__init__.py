"""Calibration: data → packed token rows → observed, sum-reducible statistics per MoE block."""

from .data import calibration_rows, describe, iter_texts
from .observers import ExpertObserver
from .runner import collect_stats, model_device
from .stats import LayerStats

__all__ = [
    "ExpertObserver",
    "LayerStats",
    "calibration_rows",
    "collect_stats",
    "describe",
    "iter_texts",
    "model_device",
]
