"""`evolutionary`: an EvoESAP-style search over per-layer keep counts, judged by the pruned model's agreement with
the unpruned one (reads the whole model)."""

from __future__ import annotations

import torch

from hf_moe_prune.allocation.budget import fit_budget, layer_floor, select_experts
from hf_moe_prune.calibration.runner import model_device, model_inputs
from hf_moe_prune.registries import register_allocation
from hf_moe_prune.reshape import mask_experts


@torch.no_grad()
def _agreement(model, blocks, scores, counts, rows, teacher) -> float:
    """ESAP fitness: mean over positions of sum_v min(p_full, p_pruned), with the plan applied as a router mask."""
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
