"""Frequency: how many calibration tokens the router sends to each expert.

    S_j = |X_j|,   X_j = {tokens whose top-k includes expert j}

The classic usage baseline (REAP's `frequency`, arXiv 2510.13999; NAEE and MC-SMoE use it to find dominant experts).
"""

from hf_moe_prune.methods.base import register_method


@register_method("frequency", requires=("count",), reference="REAP baseline, arXiv 2510.13999")
def frequency(stats, generator=None):
    return stats["count"]
