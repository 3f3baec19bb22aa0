"""Budget arithmetic of every allocation: per-layer keep counts and their floors, the global budget, its exact
rounding, and which experts a count keeps given their scores; all checked before calibration."""

from __future__ import annotations

import fnmatch
import math

import torch

from hf_moe_prune.adapters import MoEBlock
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.registries import ALLOCATIONS


def is_ignored(block: MoEBlock, ignore: list[str | int]) -> bool:
    """True if the block matches a layer index or a module-name glob pattern in `ignore`."""
    return any(
        (isinstance(p, int) and p == block.layer_idx) or (isinstance(p, str) and fnmatch.fnmatch(block.name, p))
        for p in ignore
    )


def keeps_all(block: MoEBlock, config: MoEPruneConfig) -> bool:
    """True if whole-expert pruning leaves the block whole: ignored, or routed by a fixed table (hash routing)."""
    return block.fixed_routing or is_ignored(block, config.ignore)


def keep_counts(blocks: list[MoEBlock], config: MoEPruneConfig) -> dict[str, int]:
    """Number of experts each block keeps, checked against its expert count and top-k before any calibration.

    Ignored blocks and blocks with fixed routing (`MoEBlock.fixed_routing`) keep all their experts.

    Raises:
        `ValueError`: a layer would keep fewer experts than it routes to per token, or more than it has.
    """
    allocation = config.allocation
    if isinstance(allocation, (list, tuple)) and len(allocation) != len(blocks):
        raise ValueError(
            f"allocation lists {len(allocation)} keep counts but the model has {len(blocks)} MoE layers "
            f"({[b.layer_idx for b in blocks]}); give one count per MoE layer or a dict {{layer_index: count}}."
        )
    per_layer = {int(k): v for k, v in allocation.items()} if isinstance(allocation, dict) else {}
    unknown = set(per_layer) - {b.layer_idx for b in blocks}
    if unknown:
        raise ValueError(f"allocation names layers {sorted(unknown)} that are not MoE layers of this model.")
    counts = {}
    for i, block in enumerate(blocks):
        num = block.num_experts
        if block.fixed_routing:
            explicit = allocation[i] if isinstance(allocation, (list, tuple)) else per_layer.get(block.layer_idx, num)
            if int(explicit) != num:
                raise ValueError(
                    f"Layer {block.layer_idx} picks its experts from a fixed token-to-expert table (hash routing), "
                    f"not its router: it keeps all {num} experts, so give it {num} (not {explicit}) or leave it out."
                )
            keep = num
        elif is_ignored(block, config.ignore):
            keep = num
        elif isinstance(allocation, (list, tuple)):
            keep = int(allocation[i])
        elif per_layer:
            keep = int(per_layer.get(block.layer_idx, num))
        elif isinstance(allocation, str) and not ALLOCATIONS.get(allocation).fixed_counts:
            keep = num  # adaptive: decided after scoring by `allocate`; `check_budget` checks feasibility
        elif config.num_experts_to_keep is not None:
            keep = int(config.num_experts_to_keep)
        else:
            keep = num - math.floor(config.ratio * num + 1e-9)
            n_group = block.groups[0]
            if n_group > 1:  # grouped routing needs the same count in every group: round to a multiple
                keep = max(n_group, n_group * math.floor(keep / n_group + 0.5))
        if keep > num:
            raise ValueError(f"Layer {block.layer_idx} has {num} experts and cannot keep {keep}; keep at most {num}.")
        if keep < block.top_k:
            max_ratio = (num - block.top_k) / num
            raise ValueError(
                f"Layer {block.layer_idx} would keep {keep} of {num} experts but routes every token to top-k="
                f"{block.top_k} experts: keep at least {block.top_k} (ratio at most {max_ratio:.3g})."
            )
        check_groups(block, keep)
        counts[block.name] = keep
    return counts


def check_groups(block: MoEBlock, keep: int) -> None:
    """Group-limited routing (DeepSeek-V3 style) reshapes scores to `[n_group, E / n_group]`, ranks each group by its
    best two experts and picks `topk_group` groups: every group must keep the same number of experts, at least two,
    and the picked groups must still hold top-k experts."""
    n_group, topk_group = block.groups
    if n_group <= 1 or keep == block.num_experts:
        return
    if keep % n_group:
        raise ValueError(
            f"Layer {block.layer_idx} routes within {n_group} expert groups, so it must keep a multiple of {n_group} "
            f"experts (the same number per group), not {keep}."
        )
    per_group = keep // n_group
    if per_group < 2 or per_group * topk_group < block.top_k:
        raise ValueError(
            f"Layer {block.layer_idx} would keep {per_group} experts per group; group-limited routing needs at least "
            f"2 per group and {topk_group} groups × {per_group} ≥ top-k={block.top_k}: keep more experts."
        )


def select_experts(scores: torch.Tensor, keep: int, n_group: int = 1) -> list[int]:
    """Indices of the `keep` highest scores, in ascending expert order (ties go to the lower index).

    With `n_group` expert groups (contiguous blocks of experts), each group keeps its `keep / n_group` best experts,
    so that group-limited routing sees equal groups after slicing.
    """
    if n_group > 1 and keep < len(scores):
        size, per_group = len(scores) // n_group, keep // n_group
        return sorted(
            g * size + i for g in range(n_group) for i in select_experts(scores[g * size : (g + 1) * size], per_group)
        )
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    return sorted(order[:keep].tolist())


# The budget arithmetic every allocator shares. An allocator is `allocate(blocks, scores, budget, context) -> {block
# name: keep count}`; `scores` are the method's per-expert scores (higher = keep), `budget` the exact total number of
# experts to keep over the allocated blocks. Every allocator returns counts that respect each layer's floor (≥ top-k
# and the expert-group rules) and sum to `budget` exactly; `fit_budget` does the rounding repair.


def total_budget(blocks: list[MoEBlock], config: MoEPruneConfig) -> int:
    """Experts kept over all `blocks`: total − floor(ratio × total), or num_experts_to_keep per layer."""
    total = sum(b.num_experts for b in blocks)
    if config.num_experts_to_keep is not None:
        return sum(min(int(config.num_experts_to_keep), b.num_experts) for b in blocks)
    return total - math.floor(config.ratio * total + 1e-9)


def layer_floor(block: MoEBlock) -> int:
    """Fewest experts a layer can keep: top-k, and with expert groups a multiple of n_group with ≥ 2 per group whose
    `topk_group` groups still hold top-k experts."""
    n_group, topk_group = block.groups
    if n_group <= 1:
        return block.top_k
    per_group = max(2, math.ceil(block.top_k / max(topk_group, 1)))
    return min(block.num_experts, n_group * per_group)


def fit_budget(blocks: list[MoEBlock], desired: dict[str, float], budget: int) -> dict[str, int]:
    """Integer keep counts closest to `desired` with every floor/ceiling/group step respected and sum == `budget`.

    Rounds, clamps, then moves one step (n_group experts, or 1) at a time into the layer furthest below its desired
    count, or out of the layer furthest above it, until the budget is met exactly.

    Raises:
        `ValueError`: the budget is below the sum of the floors, above the total, or not reachable in group steps.
    """
    lo = {b.name: layer_floor(b) for b in blocks}
    hi = {b.name: b.num_experts for b in blocks}
    step = {b.name: max(1, b.groups[0]) for b in blocks}
    if not sum(lo.values()) <= budget <= sum(hi.values()):
        raise ValueError(
            f"cannot keep {budget} experts in total: the layers need at least {sum(lo.values())} (top-k floors) "
            f"and have {sum(hi.values())}."
        )
    counts = {}
    for b in blocks:
        s = step[b.name]
        c = s * round(desired[b.name] / s)
        counts[b.name] = min(hi[b.name], max(lo[b.name], c))
    for _ in range(4 * sum(hi.values()) + 8):
        diff = budget - sum(counts.values())
        if diff == 0:
            break
        sign = 1 if diff > 0 else -1
        movable = [n for n in counts if lo[n] <= counts[n] + sign * step[n] <= hi[n]]
        # a step no larger than the gap if possible; else overshoot with a group step and come back with single ones
        cands = [n for n in movable if step[n] <= abs(diff)] or movable
        if not cands:
            break
        key = (lambda n: desired[n] - counts[n]) if sign > 0 else (lambda n: counts[n] - desired[n])
        best = max(cands, key=lambda n: (key(n), -list(counts).index(n)))
        counts[best] += sign * step[best]
    if sum(counts.values()) != budget:
        raise ValueError(f"cannot meet the global budget of {budget} experts exactly in the layers' group steps.")
    return counts


def check_removes_experts(blocks: list[MoEBlock], config: MoEPruneConfig, counts: dict[str, int]) -> None:
    """Before calibration: the request removes at least one expert (a run that prunes nothing must not exit 0 as if
    it had worked).

    Raises:
        `ValueError`: every layer is ignored (or hash-routed), or the ratio rounds down to no expert anywhere.
    """
    active = [b for b in blocks if not keeps_all(b, config)]
    if not active:
        raise ValueError(
            "ignore= (with any fixed-routing layers) leaves every MoE layer whole: nothing would be pruned. "
            f"The MoE layers are {[b.layer_idx for b in blocks]}; ignore fewer of them."
        )
    if isinstance(config.allocation, str) and not ALLOCATIONS.get(config.allocation).fixed_counts:
        removed = sum(b.num_experts for b in active) - total_budget(active, config)
    else:
        removed = sum(b.num_experts - counts[b.name] for b in blocks)
    if removed > 0:
        return
    if config.ratio is not None:
        smallest = min(b.num_experts for b in active)
        raise ValueError(
            f"ratio={config.ratio} removes no expert: {config.ratio} × {smallest} experts per layer rounds down to "
            f"0. Use a ratio of at least 1/{smallest} = {1 / smallest:.4g}."
        )
    raise ValueError("The requested expert counts keep every expert of every MoE layer: nothing would be pruned.")


def check_budget(blocks: list[MoEBlock], config: MoEPruneConfig) -> None:
    """Before calibration: the allocation exists and the global budget can be met with every layer's floor."""
    if isinstance(config.allocation, str) and not ALLOCATIONS.get(config.allocation).fixed_counts:
        ALLOCATIONS.get(config.allocation)
        active = [b for b in blocks if not keeps_all(b, config)]
        if active:
            budget = total_budget(active, config)
            floors = sum(layer_floor(b) for b in active)
            if budget < floors:
                raise ValueError(
                    f"ratio={config.ratio} keeps {budget} experts in total but the layers need at least {floors} "
                    "(each keeps at least top-k): use a smaller ratio."
                )
