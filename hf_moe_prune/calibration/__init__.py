"""Calibration: data → packed token rows → observed, sum-reducible statistics per MoE block."""

from hf_moe_prune.calibration.data import calibration_rows, describe, iter_texts
from hf_moe_prune.calibration.observers import ExpertObserver
from hf_moe_prune.calibration.runner import collect_stats, model_device
from hf_moe_prune.calibration.stats import LayerStats

__all__ = [
    "ExpertObserver",
    "LayerStats",
    "calibration_rows",
    "collect_stats",
    "describe",
    "iter_texts",
    "model_device",
]
