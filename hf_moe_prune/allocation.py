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
        if keep > num:
            raise ValueError(f"Layer {block.layer_idx} has {num} experts and cannot keep {keep}; keep at most {num}.")
        if keep < block.top_k:
            max_ratio = (num - block.top_k) / num
            raise ValueError(
                f"Layer {block.layer_idx} would keep {keep} of {num} experts but routes every token to top-k="
                f"{block.top_k} experts: keep at least {block.top_k} (ratio at most {max_ratio:.3g})."
            )
        counts[block.name] = keep
    return counts


def select_experts(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, in ascending expert order (ties go to the lower index)."""
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    return sorted(order[:keep].tolist())
