"""Random: uniformly random expert scores from a seeded generator; the floor any real criterion must beat."""

import torch

from hf_moe_prune.methods.base import register_method


@register_method("random", requires=(), reference="baseline")
def random_scores(stats, generator=None):
    return torch.rand(stats.num_experts, generator=generator, dtype=torch.float64)
