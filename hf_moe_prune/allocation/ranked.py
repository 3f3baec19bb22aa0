"""`global` and `learned`: all experts of all layers ranked together under one budget, so layers keep different
counts."""

from __future__ import annotations

import torch

from hf_moe_prune.allocation.budget import fit_budget, layer_floor
from hf_moe_prune.registries import register_allocation


def _global_rank(blocks, normalized: dict[str, torch.Tensor], budget: int) -> dict[str, int]:
    """Counts from ranking all experts of all layers together: floors first, then the best remaining scores."""
    lo = {b.name: layer_floor(b) for b in blocks}
    counts = dict(lo)
    rest = []
    for b in blocks:
        order = torch.sort(normalized[b.name].double(), descending=True, stable=True).values
        rest += [(float(v), b.name) for v in order[lo[b.name] :]]
    rest.sort(key=lambda t: -t[0])  # stable: ties keep layer order
    for _, name in rest[: max(0, budget - sum(lo.values()))]:
        counts[name] += 1
    return fit_budget(blocks, {k: float(v) for k, v in counts.items()}, budget)


@register_allocation("global")
def global_allocation(blocks, scores, budget, context=None) -> dict[str, int]:
    """Scores normalized per layer (divided by the layer's mean, so every layer's scores average 1 and layers with
    a few dominant experts give up their weak ones first), then ranked across layers under one budget."""
    normalized = {}
    for b in blocks:
        s = scores[b.name].double().clamp(min=0)
        normalized[b.name] = s / s.mean() if float(s.sum()) > 0 else torch.ones_like(s)
    return _global_rank(blocks, normalized, budget)


@register_allocation("learned")
def learned_allocation(blocks, scores, budget, context=None) -> dict[str, int]:
    """Raw scores ranked across layers (for methods whose scores are already comparable between layers, e.g. DiEP's
    learned σ(α + β) keep probabilities)."""
    return _global_rank(blocks, {b.name: scores[b.name] for b in blocks}, budget)
