"""`auto`: not a score but a search. One calibration pass gathers the statistics of every forward-statistics method;
candidate plans (each criterion, its sum and mean forms where it has both, under each cross-layer allocation the
family allows) are judged on the calibration rows held out from scoring (`eval_fraction`) by the KL divergence of
the pruned model from the unpruned one, with the experts masked in the router (no reload, no copy); the best one is
applied. Unless a compensation is named, the best plans are judged again with each compensation that can be
undone (`compensation="auto"`). See `hf_moe_prune.pipeline.auto` and the plan's `search` table.
"""

import torch

from hf_moe_prune.methods.base import register_method


@register_method(
    "auto",
    reference="ours: candidates judged on held-out rows",
    searches=True,
    options={},
    default_allocation="auto",
    default_compensation="auto",
)
def auto(stats, generator=None):
    """Never called: `hf_moe_prune.pipeline.auto` scores with the chosen candidate's method."""
    return torch.zeros(stats.num_experts, dtype=torch.float64)
