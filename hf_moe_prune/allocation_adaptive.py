"""Allocations that read the model itself: COMPEL's `outlier` (weight outliers of each layer's experts) and the
`evolutionary` search (agreement of the pruned model's outputs with the unpruned one's)."""

from __future__ import annotations

import torch

from .allocation import fit_budget, layer_floor, select_experts
from .registries import register_allocation
from .reshape import mask_experts


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


@torch.no_grad()
def _agreement(model, blocks, scores, counts, rows, teacher) -> float:
    """ESAP fitness: mean over positions of sum_v min(p_full, p_pruned), with the plan applied as a router mask."""
    from .calibration.runner import model_device, model_inputs

    kept = {b.name: select_experts(scores[b.name], counts[b.name], b.groups[0]) for b in blocks}
    device = model_device(model)
    total = 0.0
    with mask_experts(blocks, kept):
        for batch, reference in zip(rows, teacher, strict=True):
            logits = model(**model_inputs(model, batch.to(device)), use_cache=False).logits
            probs = torch.softmax(logits.float(), dim=-1)
            total += float(torch.minimum(probs, reference.to(probs.device)).sum(-1).mean())
    return total / len(teacher)


@register_allocation("evolutionary", reads_model=True)
def evolutionary_allocation(blocks, scores, budget, context=None) -> dict[str, int]:
    """EvoESAP-style search over per-layer keep counts (Liu et al., arXiv 2603.06003).

    The within-layer order comes from the method's scores; the search moves budget between layers. A candidate is
    a keep count per layer (floors, group steps and the exact budget respected); its fitness is the teacher-forced
    agreement with the unpruned model on calibration tokens, `mean_t sum_v min(p_full, p_pruned)` (ESAP, 1 − total
    variation), evaluated with the plan as a router mask. Elitist evolution: each generation mutates the survivors by
    moving one step of experts from one layer to another. Options (`context["evolution"]`, ours): `population` 8,
    `generations` 8, `survivors` 3, `search_rows` 4; start = the proportional (uniform) allocation.
    """
    context = context or {}
    model, rows = context.get("model"), context.get("rows")
    start = fit_budget(
        blocks, {b.name: budget * b.num_experts / sum(x.num_experts for x in blocks) for b in blocks}, budget
    )
    if model is None or rows is None:
        return start
    options = {"population": 8, "generations": 8, "survivors": 3, "search_rows": 4, **context.get("evolution", {})}
    search = rows[: options["search_rows"]]
    batches = [search[i : i + 2] for i in range(0, len(search), 2)]
    from .calibration.runner import model_device, model_inputs

    device = model_device(model)
    with torch.no_grad():
        teacher = [
            torch.softmax(model(**model_inputs(model, b.to(device)), use_cache=False).logits.float(), -1).cpu()
            for b in batches
        ]
    generator = torch.Generator().manual_seed(int(context.get("seed", 0)))
    lo = {b.name: layer_floor(b) for b in blocks}
    step = {b.name: max(1, b.groups[0]) for b in blocks}
    names = [b.name for b in blocks]

    def mutate(counts: dict[str, int]) -> dict[str, int]:
        child = dict(counts)
        for _ in range(20):  # a donor above its floor and a receiver below its size, same step
            a, b = (names[int(i)] for i in torch.randint(len(names), (2,), generator=generator))
            s = step[a]
            if (
                a != b
                and step[b] == s
                and child[a] - s >= lo[a]
                and child[b] + s <= blocks[names.index(b)].num_experts
            ):
                child[a] -= s
                child[b] += s
                return child
        return child

    scored = [(_agreement(model, blocks, scores, start, batches, teacher), start)]
    for _ in range(options["generations"]):
        parents = [c for _, c in scored[: options["survivors"]]]
        seen = {tuple(c.values()) for _, c in scored}
        for i in range(options["population"]):
            child = mutate(parents[i % len(parents)])
            if tuple(child.values()) not in seen:
                seen.add(tuple(child.values()))
                scored.append((_agreement(model, blocks, scores, child, batches, teacher), child))
        scored.sort(key=lambda t: -t[0])
        scored = scored[: max(options["survivors"], 1) * 4]
    context["evolution_fitness"] = scored[0][0]
    return scored[0][1]
