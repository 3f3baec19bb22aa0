"""Allocation: how many routed experts each MoE layer keeps, and which ones given their scores."""

from __future__ import annotations

import fnmatch
import math

import torch

from .adapters import MoEBlock
from .config import MoEPruneConfig


def is_ignored(block: MoEBlock, ignore: list[str | int]) -> bool:
    """True if the block matches a layer index or a module-name glob pattern in `ignore`."""
    return any(
        (isinstance(p, int) and p == block.layer_idx) or (isinstance(p, str) and fnmatch.fnmatch(block.name, p))
        for p in ignore
    )


def keep_counts(blocks: list[MoEBlock], config: MoEPruneConfig) -> dict[str, int]:
    """Number of experts each block keeps, checked against its expert count and top-k before any calibration.

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
        if is_ignored(block, config.ignore):
            keep = num
        elif isinstance(allocation, (list, tuple)):
            keep = int(allocation[i])
        elif per_layer:
            keep = int(per_layer.get(block.layer_idx, num))
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
        _check_groups(block, keep)
        counts[block.name] = keep
    return counts


def _check_groups(block: MoEBlock, keep: int) -> None:
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
