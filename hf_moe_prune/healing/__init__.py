"""Heal: after the experts are removed, a short distillation of the pruned model toward the unpruned one on the
calibration rows (`MoEPruneConfig(healing=...)`; `distill` has the method, `params` what trains, `lora` the LoRA
adapters that train instead of the weights with `healing={"lora": ...}`)."""

from hf_moe_prune.healing.distill import distillation_loss, heal
from hf_moe_prune.healing.lora import LoraHealing, check_lora, lora_targets
from hf_moe_prune.healing.params import MasterAdamW, trainable_parameters

__all__ = [
    "LoraHealing",
    "MasterAdamW",
    "check_lora",
    "distillation_loss",
    "heal",
    "lora_targets",
    "trainable_parameters",
]
