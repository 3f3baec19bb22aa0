"""REAP: router-weighted expert activation pruning (Lasby et al., arXiv 2510.13999, ICLR 2026).

    S_j = (1/|X_j|) sum_{x in X_j} g_j(x) * ||f_j(x)||_2

X_j are the calibration tokens routed to expert j, g_j(x) the gate value the model applied to expert j for x (so
renormalized over the top-k exactly when the model renormalizes, and including any router bias or scaling the model
uses), and f_j(x) the expert's output before gating. A per-routed-token mean, not a frequency-weighted sum, so a rarely
used but strong expert survives. `method_kwargs={"reduce": "sum"}` gives the `weighted_ean_sum` variant.

Unlike the reference code, which runs every expert on every token, only the routed (token, expert) pairs are
evaluated: the statistic only ever looks at them.
"""

from hf_moe_prune.methods.base import per_routed_token, register_method


@register_method("reap", requires=("count", "gate_norm_sum"), reference="Lasby et al., arXiv 2510.13999")
def reap(stats, generator=None, reduce: str = "mean"):
    if reduce == "sum":
        return stats["gate_norm_sum"]
    if reduce != "mean":
        raise ValueError(f"reap: reduce must be 'mean' or 'sum', got {reduce!r}")
    return per_routed_token(stats["gate_norm_sum"], stats["count"])
