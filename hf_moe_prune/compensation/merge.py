"""`merge`: each pruned expert folded into its most similar kept expert (router rows), usage-weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_moe_prune.registries import register_compensation


def _usage(context, num_experts: int) -> torch.Tensor:
    stats = getattr(context, "stats", None)
    for name in ("gate_sum", "count"):
        if stats is not None and name in stats and float(stats[name].sum()) > 0:
            return stats[name].double()
    return torch.ones(num_experts, dtype=torch.float64)


@register_compensation("merge", reads_dropped=True)
@torch.no_grad()
def merge_compensation(block, kept, context=None) -> None:
    """Merge every pruned expert e into the kept expert r with the most similar router row (cosine similarity of
    router weights: the tokens e received are the ones a router row close to e's would attract), as
    `θ_r ← (u_r θ_r + Σ_e u_e θ_e) / (u_r + Σ_e u_e)` over every expert tensor, with u the usage (soft counts).
    Neurons are averaged in place, without permutation alignment (M-SMoE-style frequency-weighted merging minus the
    alignment). Router rows of kept experts are unchanged."""
    num = block.num_experts
    pruned = [e for e in range(num) if e not in set(kept)]
    if not pruned:
        return
    router = block.router_weight.detach().float()
    sim = F.normalize(router, dim=-1) @ F.normalize(router, dim=-1).T
    kept_t = torch.as_tensor(kept)
    target = {e: int(kept_t[sim[e, kept_t].argmax()]) for e in pruned}
    usage = _usage(context, num).clamp(min=1e-12)
    groups: dict[int, list[int]] = {r: [r] for r in kept}
    for e, r in target.items():
        groups[r].append(e)
    # Per expert, the tensors of each kind: rows of a fused [E, ...] tensor, or the same-named tensor of every
    # per-expert module (Switch Transformers' `expert_{i}.wi.weight`).
    kinds: dict[str, list[torch.Tensor]] = {}
    for name, param, expert in block.expert_weights():
        if expert is None:
            kinds[f"fused.{id(param)}"] = list(param.data.unbind(0))
        else:
            kinds.setdefault(name, [None] * num)[expert] = param.data
    for tensors in kinds.values():
        for r, members in groups.items():
            if len(members) == 1:
                continue
            w = usage[members].to(tensors[r].device, torch.float32)
            merged = sum(tensors[m].float() * (w[i] / w.sum()) for i, m in enumerate(members))
            tensors[r].copy_(merged.to(tensors[r].dtype))
