"""Soft count: the routing mass each expert receives, i.e. the sum of the gate values the model applied.

    S_j = sum_{x in X_j} g_j(x)

REAP's `weighted_expert_frequency_sum` (arXiv 2510.13999), with g the gate the model really uses (after its own
renormalization), not a recomputed softmax.
"""

from hf_moe_prune.methods.base import register_method


@register_method("soft_count", requires=("gate_sum",), reference="REAP baseline, arXiv 2510.13999")
def soft_count(stats, generator=None):
    return stats["gate_sum"]
