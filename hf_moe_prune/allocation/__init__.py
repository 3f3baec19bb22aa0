"""Allocate: how many routed experts (or neurons) each MoE layer keeps under one global budget, and which ones.

One module per strategy, each registered in `hf_moe_prune.ALLOCATIONS` with a record of what it needs
(`hf_moe_prune.registries.Allocator`); `budget` holds the arithmetic they share (floors, exact rounding, selection).
"""

from __future__ import annotations

import torch

from hf_moe_prune.adapters import MoEBlock
from hf_moe_prune.allocation import auto, evolutionary, neurons, outlier, ranked, uniform  # noqa: F401  (register)
from hf_moe_prune.allocation.budget import (
    check_budget,
    check_groups,
    check_removes_experts,
    fit_budget,
    is_ignored,
    keep_counts,
    keeps_all,
    layer_floor,
    select_experts,
    total_budget,
)
from hf_moe_prune.allocation.evolutionary import evolutionary_allocation
from hf_moe_prune.allocation.outlier import input_weights, outlier_allocation
from hf_moe_prune.allocation.ranked import global_allocation, learned_allocation
from hf_moe_prune.allocation.uniform import uniform_allocation
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.registries import ALLOCATIONS

__all__ = [
    "ALLOCATIONS",
    "allocate",
    "check_budget",
    "check_groups",
    "check_removes_experts",
    "evolutionary_allocation",
    "fit_budget",
    "global_allocation",
    "input_weights",
    "is_ignored",
    "keep_counts",
    "keeps_all",
    "layer_floor",
    "learned_allocation",
    "outlier_allocation",
    "select_experts",
    "total_budget",
    "uniform_allocation",
]


def allocate(
    blocks: list[MoEBlock], scores: dict[str, torch.Tensor], config: MoEPruneConfig, context: dict | None = None
) -> dict[str, int]:
    """Keep counts for every block: explicit counts as given, ignored and fixed-routing layers whole, the rest from
    the allocator."""
    if not isinstance(config.allocation, str) or ALLOCATIONS.get(config.allocation).fixed_counts:
        return keep_counts(blocks, config)
    active = [b for b in blocks if not keeps_all(b, config)]
    counts = {b.name: b.num_experts for b in blocks}
    if active:
        counts.update(ALLOCATIONS.get(config.allocation)(active, scores, total_budget(active, config), context))
    for b in active:
        check_groups(b, counts[b.name])
    return counts
