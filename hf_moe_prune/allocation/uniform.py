"""`uniform`: every layer removes the same share of its experts (and, for neuron pruning, a flat schedule)."""

from __future__ import annotations

from hf_moe_prune.allocation.budget import fit_budget, keep_counts
from hf_moe_prune.registries import register_allocation


@register_allocation(
    "uniform",
    units=("expert", "neuron"),
    fixed_counts=True,
    schedule={"keep_whole": 0.0, "neuron_keep": (0.5, 0.5)},
)
def uniform_allocation(blocks, scores, budget, context=None) -> dict[str, int]:
    """Every layer removes floor(ratio × E_l) (rounded to whole expert groups). The total is the
    exact global budget whenever ratio × E_l is whole (and layers have equal E); otherwise per-layer rounding can
    keep a few experts more than `budget`, kept as is for reproducibility of existing plans."""
    config = (context or {}).get("config")
    if config is None:
        total = sum(b.num_experts for b in blocks)
        return fit_budget(blocks, {b.name: budget * b.num_experts / total for b in blocks}, budget)
    return keep_counts(blocks, config)
