"""Expert-neuron pruning: the fused layout of intermediate neurons, width-grouped experts, and the neuron schedule."""

from .grouped import WidthGroupedExperts, narrow_experts, prune_neurons
from .layout import NeuronLayout, expert_intermediate, neuron_layout
from .schedule import NEURON_ALLOCATIONS, NEURON_SCORES, SCHEDULE_KEYS, neuron_plan, schedule_options

__all__ = [
    "NEURON_ALLOCATIONS",
    "NEURON_SCORES",
    "SCHEDULE_KEYS",
    "NeuronLayout",
    "WidthGroupedExperts",
    "expert_intermediate",
    "narrow_experts",
    "neuron_layout",
    "neuron_plan",
    "prune_neurons",
    "schedule_options",
]
