"""TENP: trapezoidal expert neuron pruning (He, Zhu, Xiong, Findings of ACL 2026, arXiv 2606.09885).

Keeps every expert reachable: the most important experts of each layer stay whole, the others lose intermediate
neurons, more of them in shallow layers than in deep ones (the "trapezoid", see `hf_moe_prune.allocation.neurons`).

Expert importance combines the magnitude of the expert's gated output with how much it turns the direction of its
input (the paper's two factors; no reference code exists, this is our reading, `importance="direction"`):

    I_j = (1/|X_j|) sum_{x in X_j} g_j(x) * ||f_j(x)|| * (1 - cos(x, x + g_j(x) f_j(x)))

`importance="magnitude"` drops the direction factor (REAP's score). Neuron importance is each neuron's contribution to
the expert output, `mean |a_i(x)| * ||W_d[:, i]||` (`neuron_score="magnitude"`, the default) or its projection on the
output direction (`neuron_score="projection"`). The paper's budget is the fraction of routed-expert parameters removed
(`ratio=0.4` in its headline result); the trapezoid's endpoints are `keep_whole` and `neuron_keep` in `method_kwargs`.
"""

from hf_moe_prune.methods.base import per_routed_token, register_method


@register_method(
    "tenp",
    requires=("count", "direction_sum", "gate_norm_sum"),
    reference="He, Zhu, Xiong, Findings of ACL 2026 (arXiv 2606.09885)",
    default_allocation="trapezoid",
    unit="neuron",
)
def tenp(stats, generator=None, importance: str = "direction"):
    if importance == "direction":
        return per_routed_token(stats["direction_sum"], stats["count"])
    if importance == "magnitude":
        return per_routed_token(stats["gate_norm_sum"], stats["count"])
    raise ValueError(f"tenp: importance must be 'direction' or 'magnitude', got {importance!r}")
