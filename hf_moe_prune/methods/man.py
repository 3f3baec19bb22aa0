"""MAN: mean activation norm, the L2 norm of the expert's output averaged over the tokens routed to it.

    S_j = (1/|X_j|) sum_{x in X_j} ||f_j(x)||_2

Liu et al., arXiv 2606.15716 (REAP's `ean_mean`). Gate-free and frequency-free: a rarely routed expert with large
outputs ranks high. Same statistics as `ean` (its sum), so both come from one calibration pass.
"""

from hf_moe_prune.methods.base import per_routed_token, register_method


@register_method("man", requires=("count", "norm_sum"), reference="Liu et al., arXiv 2606.15716")
def man(stats, generator=None):
    return per_routed_token(stats["norm_sum"], stats["count"])
