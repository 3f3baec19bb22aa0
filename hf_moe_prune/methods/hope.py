"""HOPE: higher-order pruning of experts (Tseng, Kaul, Zancato, Xia, Soatto, arXiv 2609.18916; code: awslabs/HOPE).

    F_ij = (1/|X_ij|) sum_{x in X_ij} g_i(x) ||f_i(x)|| g_j(x) ||f_j(x)||,  X_ij = {x : i, j in top-k(x)} (0 if empty)

    R* = argmin_{|R| = E - keep} b_R^T F b_R

g_j(x) is the gate the model applied, f_j(x) expert j's output before gating, b_R the indicator of the removed set R;
the diagonal is the mean over the tokens routed to i of g_i(x)^2 ||f_i(x)||^2. This is the published mean form, kept
as a baseline: each entry is a per-pair mean, so a pair co-selected on one token weighs as much as one co-selected on
every token, and b^T F b is not the output error of removing R (`output_error` is: sums of inner products).

Our reading of the reference code (`hope/calibrate.py`, `hope/solve.py`), and where we differ:
- Same statistics: `norm_prod_sums` / `coselect_counts` over ordered pairs of top-k slots are our `pair_norm_sum` /
  `pair_count`, F their ratio where the count is positive; gates as the experts module receives them.
- Solver: the reference relaxes b to [0, 1]^E with sum(b) = E - keep (SLSQP from the uniform point) and rounds its
  E - keep largest entries to 1. We search the binary problem directly
  (`hf_moe_prune.methods.base.select_min_quadratic`: removing and restoring greedy passes improved by swaps;
  `method_kwargs={"search": "greedy"}`: the removing greedy pass alone), so the removed set can differ from the
  reference's on the same F.
- Budget: the reference removes int(fraction × E) experts in every layer; here the allocation sets each layer's count
  (uniform by default, any allocation works) and expert groups keep equal counts.
The score of expert j (for allocations that rank across layers, such as `global`, and the plan) is F_jj, higher = keep.
"""

from __future__ import annotations

import torch

from hf_moe_prune.methods.base import register_method, select_min_quadratic

SEARCHES = ("swap", "greedy")


def interaction_matrix(stats) -> torch.Tensor:
    """HOPE's F: the mean of g_i ||f_i|| g_j ||f_j|| over the tokens that route to both i and j (0 where none do)."""
    count, total = stats["pair_count"], stats["pair_norm_sum"]
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def _check(search: str) -> None:
    if search not in SEARCHES:
        raise ValueError(f"hope: search must be one of {SEARCHES}, got {search!r}")


def hope_select(stats, keep: int, n_group: int = 1, search: str = "swap") -> list[int]:
    """The kept experts: the complement of the removed set minimising b^T F b (see the module docstring)."""
    _check(search)
    return select_min_quadratic(interaction_matrix(stats), keep, n_group, swaps=search == "swap")


@register_method(
    "hope",
    requires=("pair_count", "pair_norm_sum"),
    reference="Tseng et al., arXiv 2609.18916 (awslabs/HOPE; binary search instead of the relaxed QP)",
    select=hope_select,
)
def hope(stats, generator=None, search: str = "swap") -> torch.Tensor:
    _check(search)
    return interaction_matrix(stats).diagonal().clone()
