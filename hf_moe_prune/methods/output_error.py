"""Output error: remove the set of experts whose routed outputs add up to the least, pairwise interactions included.

    F_ij = sum_{x : i, j in K(x)} g_i(x) g_j(x) <f_i(x), f_j(x)>,    R* = argmin_{|R| = E - keep} b_R^T F b_R

K(x) is the top-k of token x, g_j(x) the gate the model applied and f_j(x) expert j's output before gating; b_R is the
indicator vector of the removed set R. Then exactly

    b_R^T F b_R = sum_x || sum_{j in R ∩ K(x)} g_j(x) f_j(x) ||^2,

the squared error of the block's output over the calibration tokens when the removed experts' slots are dropped and
the tokens are not re-routed (the kept experts keep their gates). The pruned model does re-route (a removed expert's
tokens go to their next choice), which this objective does not model. Ours: the exact form of the interaction matrix
of HOPE (Tseng et al., arXiv 2609.18916; see `hope`), whose entries are per-pair means of norm products instead.

Selection (`hf_moe_prune.methods.base.select_min_quadratic`): a removing and a restoring greedy pass, each improved by
swaps until none lowers the error, the better taken (`method_kwargs={"search": "greedy"}`: the removing greedy pass
alone); exact budget, expert groups respected. The score of
expert j, used by allocations that rank experts across layers (`global`, ...) and written into the plan, is F_jj =
sum_x g_j(x)^2 ||f_j(x)||^2, the error of removing j alone (higher = keep).
"""

from __future__ import annotations

import torch

from hf_moe_prune.methods.base import register_method, select_min_quadratic

SEARCHES = ("swap", "greedy")


def _check(search: str) -> None:
    if search not in SEARCHES:
        raise ValueError(f"output_error: search must be one of {SEARCHES}, got {search!r}")


def output_error_select(stats, keep: int, n_group: int = 1, search: str = "swap") -> list[int]:
    """The kept experts: the complement of the removed set minimising the output error (see the module docstring)."""
    _check(search)
    return select_min_quadratic(stats["pair_dot_sum"], keep, n_group, swaps=search == "swap")


@register_method(
    "output_error",
    requires=("pair_dot_sum",),
    reference="ours: exact output-error form of HOPE's interaction matrix (arXiv 2609.18916)",
    select=output_error_select,
)
def output_error(stats, generator=None, search: str = "swap") -> torch.Tensor:
    _check(search)
    return stats["pair_dot_sum"].diagonal().clone()
