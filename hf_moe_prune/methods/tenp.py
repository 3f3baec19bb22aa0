"""TENP: trapezoidal expert neuron pruning (He, Zhu, Xiong, Findings of ACL 2026, arXiv 2606.09885).

Keeps every expert reachable: the most important experts of each layer stay whole, the others lose intermediate
neurons, more of them in shallow layers than in deep ones (the "trapezoid", `allocation="trapezoid"`, see
`hf_moe_prune.allocation.neurons`).

Expert importance combines the magnitude of the expert's gated output with how much it turns the direction of its
input (the paper's two factors; no reference code exists, this is our reading, `importance="direction"`):

    I_j = (1/|X_j|) sum_{x in X_j} g_j(x) * ||f_j(x)|| * (1 - cos(x, x + g_j(x) f_j(x)))

`importance="magnitude"` drops the direction factor (REAP's score). Neuron importance is each neuron's contribution to
the expert output, `mean |a_i(x)| * ||W_d[:, i]||` (`neuron_score="magnitude"`, the default) or its projection on the
output direction (`neuron_score="projection"`). The paper's budget is the fraction of routed-expert parameters removed
(`ratio=0.4` in its headline result); the trapezoid's endpoints are `keep_whole` and `neuron_keep` in `method_kwargs`.

Default schedule (ours): the flat one (`allocation="uniform"`: no expert kept whole, every expert of every layer
keeps the same share of its neurons), not the paper's trapezoid, because it measured better on all four trained
fixtures at both budgets of `benchmarks/neurons.py quality` (perplexity at 25% / 40% of the routed-expert parameters,
flat against trapezoid: qwen3_moe 57.92 / 62.27 against 59.21 / 72.31, qwen2_moe 59.14 / 60.51 against
59.54 / 62.67, olmoe 47.88 / 50.78 against 48.27 / 51.08, deepseek_v3 42.38 / 43.06 against 42.52 / 43.36; KL
likewise). Their small experts all carry weight, so narrowing some harder costs more than keeping others whole saves.
With the flat schedule the expert scores only order the rounding repair (see `hf_moe_prune.allocation.neurons`).
"""

from hf_moe_prune.methods.base import per_routed_token, register_method


@register_method(
    "tenp",
    requires=("count", "direction_sum", "gate_norm_sum"),
    reference="He, Zhu, Xiong, Findings of ACL 2026 (arXiv 2606.09885)",
    default_allocation="uniform",
    unit="neuron",
)
def tenp(stats, generator=None, importance: str = "direction"):
    if importance == "direction":
        return per_routed_token(stats["direction_sum"], stats["count"])
    if importance == "magnitude":
        return per_routed_token(stats["gate_norm_sum"], stats["count"])
    raise ValueError(f"tenp: importance must be 'direction' or 'magnitude', got {importance!r}")
