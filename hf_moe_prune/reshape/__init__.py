"""Reshape: the module surgery every stage above relies on. Slice experts out (`slicing`), mask them in the router
(`mask`), edit accelerate-offloaded weights in place (`offload`), and narrow experts to their kept neurons
(`neuron_layout` describes where the neurons sit in each family's fused weights, `grouped` holds experts of
different widths)."""

from hf_moe_prune.reshape.grouped import WidthGroupedExperts, narrow_experts, prune_neurons
from hf_moe_prune.reshape.mask import mask_experts, offset_router_logits
from hf_moe_prune.reshape.neuron_layout import NeuronLayout, expert_intermediate, neuron_layout
from hf_moe_prune.reshape.offload import onloaded
from hf_moe_prune.reshape.slicing import check_same_count, set_expert_count, slice_block

__all__ = [
    "NeuronLayout",
    "WidthGroupedExperts",
    "check_same_count",
    "expert_intermediate",
    "mask_experts",
    "narrow_experts",
    "neuron_layout",
    "offset_router_logits",
    "onloaded",
    "prune_neurons",
    "set_expert_count",
    "slice_block",
]
