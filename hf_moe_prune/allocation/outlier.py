"""`outlier`: COMPEL's layer importance from the weight outliers of each layer's experts (OWL-style)."""

from __future__ import annotations

import torch

from hf_moe_prune.allocation.budget import fit_budget
from hf_moe_prune.registries import register_allocation


def input_weights(block) -> torch.Tensor:
    """The weights through which the experts read the block input, as `[E, rows, hidden]`: the fused gate/up (or up)
    projection, transposed back where the family stores it `[E, hidden, rows]` (GPT-OSS, Llama 4), the flattened
    first linear of DBRX, or the first linear of every per-expert module stacked (Switch Transformers' `wi`)."""
    hidden, num = block.router_weight.shape[1], block.num_experts
    experts = block.experts
    for _, p, e in block.expert_weights():
        if e is None and p.dim() == 3 and hidden in p.shape[1:]:
            transposed = getattr(experts, "is_transposed", None)
            if transposed is None:  # not described: Llama 4's bmm layout, or whichever axis is the hidden one
                transposed = block.adapter.routing == "dense_scaled_input" or p.shape[2] != hidden
            return p.transpose(1, 2) if transposed else p
    for path in block.adapter.flat_expert_tensors:
        return experts.get_parameter(path).view(num, -1, hidden)
    per_expert: dict[str, list[torch.Tensor]] = {}
    for name, p, e in block.expert_weights():
        if e is not None and p.dim() == 2 and p.shape[1] == hidden:
            per_expert.setdefault(name, []).append(p)
    if per_expert:
        return torch.stack(next(iter(per_expert.values())))
    raise ValueError(f"{block.name}: cannot find the experts' input projection (an [E, rows, {hidden}] weight).")


@register_allocation("outlier", needs_inputs=True, distributed=False)
def outlier_allocation(blocks, scores, budget, context=None) -> dict[str, int]:
    """COMPEL's layer importance, read as OWL (Yin et al. 2024): layers with more weight outliers keep more experts.

    For each layer, the Wanda metric `A_ab = |W_ab| · ||X_b||_2` over the experts' gate/up weights (X = the block's
    input on the calibration tokens; all tokens, not only the routed ones, which is ours), the outlier ratio
    `D_l = #{A > M · mean(A)} / #A` (M = 3), the density `d_l = (D_l − min D)/(max D − min D) · 2λ − mean + keep`
    (λ = 0.08, OWL's defaults), and `keep_l = d_l · E_l`, repaired to the exact budget with the per-layer floors.
    Without calibration inputs (`context` lacks `input_norms`) it falls back to the weight magnitudes alone.
    """
    hyper_m = float((context or {}).get("outlier_m", 3.0))
    lam = float((context or {}).get("outlier_lambda", 0.08))
    norms = (context or {}).get("input_norms", {})
    ratios = []
    for b in blocks:
        weight = input_weights(b).detach().float().abs()  # [E, rows, H]
        xnorm = norms.get(b.name)
        metric = weight * xnorm.to(weight.device).float().view(1, 1, -1) if xnorm is not None else weight
        ratios.append(float((metric > hyper_m * metric.mean()).float().mean()))
    d = torch.tensor(ratios, dtype=torch.float64)
    total = sum(b.num_experts for b in blocks)
    keep = budget / total
    if float(d.max() - d.min()) > 0:
        d = (d - d.min()) / (d.max() - d.min()) * 2 * lam
        d = d - d.mean() + keep
    else:
        d = torch.full_like(d, keep)
    if context is not None:
        context["outlier_ratios"] = {b.name: r for b, r in zip(blocks, ratios, strict=True)}
    return fit_budget(blocks, {b.name: float(d[i]) * b.num_experts for i, b in enumerate(blocks)}, budget)
