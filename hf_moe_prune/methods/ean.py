"""EAN: expert activation norm, the L2 norm of the expert's output summed over the tokens routed to it.

    S_j = sum_{x in X_j} ||f_j(x)||_2

X_j are the calibration tokens routed to expert j and f_j(x) the expert's output before gating. This is EAN as the
literature defines it (REAP's `ean_sum`, arXiv 2510.13999; the activation-norm criteria of MC-Suite, arXiv
2504.05586): frequent experts and strong ones both survive. `method_kwargs={"reduce": "mean"}` gives the per-routed-
token mean, which is `man` (MAN, Liu et al., arXiv 2606.15716; REAP's `ean_mean`); until 2026-11-30 this library
called the mean `ean`, which keeps rare experts with large outputs and loses badly on models with many small experts.
"""

from hf_moe_prune.methods.base import per_routed_token, register_method


@register_method("ean", requires=("count", "norm_sum"), reference="REAP baseline, arXiv 2510.13999")
def ean(stats, generator=None, reduce: str = "sum"):
    if reduce == "sum":
        return stats["norm_sum"]
    if reduce != "mean":
        raise ValueError(f"ean: reduce must be 'sum' or 'mean', got {reduce!r}")
    return per_routed_token(stats["norm_sum"], stats["count"])
