"""Heal: after the experts are removed, a short distillation of the pruned model toward the unpruned one on the
calibration rows (`MoEPruneConfig(healing=...)`; `distill` has the method, `params` what trains)."""

from hf_moe_prune.healing.distill import distillation_loss, heal
from hf_moe_prune.healing.params import MasterAdamW, trainable_parameters

__all__ = ["MasterAdamW", "distillation_loss", "heal", "trainable_parameters"]
