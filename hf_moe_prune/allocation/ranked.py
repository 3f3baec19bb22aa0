"""`global` (all experts of all layers ranked together under one budget) and `learned` (each layer keeps its
expected count under learned keep probabilities): layers keep different counts."""

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
    """Each layer keeps its expected count Σ_j p_j under keep probabilities p (DiEP's learned σ(α + β)).

    The counts are scaled to the exact budget with the per-layer floors (for other non-negative scores: in proportion
    to each layer's sum).

    With binary probabilities this is ranking them across layers; with interior ones (DiEP's relaxation ends there)
    ranking would hand a layer all its experts, or only its floor, for a small shift of its β."""
    mass = {b.name: float(scores[b.name].double().clamp(min=0).sum()) for b in blocks}
    total = sum(mass.values())
    if total <= 0:
        return fit_budget(blocks, {b.name: float(b.num_experts) for b in blocks}, budget)
    return fit_budget(blocks, {b.name: budget * mass[b.name] / total for b in blocks}, budget)
