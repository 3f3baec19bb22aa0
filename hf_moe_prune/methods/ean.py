"""EAN: expert activation norm, the mean L2 norm of the expert's output over the tokens routed to it.

    S_j = (1/|X_j|) sum_{x in X_j} ||f_j(x)||_2

REAP's `ean_mean` (arXiv 2510.13999). `method_kwargs={"reduce": "sum"}` gives `ean_sum` (frequency-weighted).
"""

from hf_moe_prune.methods.base import per_routed_token, register_method


@register_method("ean", requires=("count", "norm_sum"), reference="REAP baseline, arXiv 2510.13999")
def ean(stats, generator=None, reduce: str = "mean"):
    if reduce == "sum":
        return stats["norm_sum"]
    if reduce != "mean":
        raise ValueError(f"ean: reduce must be 'mean' or 'sum', got {reduce!r}")
    return per_routed_token(stats["norm_sum"], stats["count"])
