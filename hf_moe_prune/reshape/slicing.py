"""Slicing: remove experts from a model for real (every tensor with an expert dimension) and patch its config."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_moe_prune.adapters import MoEAdapter, MoEBlock, per_expert_modules, text_config
from hf_moe_prune.registries import ALLOCATIONS


def tensor_owner(block: MoEBlock, path: str) -> tuple[nn.Module, str] | None:
    """The module holding the tensor at block-relative `path`, and its attribute name (None when absent)."""
    module_path, _, name = path.rpartition(".")
    try:
        module = block.module.get_submodule(module_path) if module_path else block.module
    except AttributeError:
        return None
    return (module, name) if isinstance(getattr(module, name, None), torch.Tensor) else None


def _slice_tensor(
    module: nn.Module, name: str, index: torch.Tensor, dim: int, num_experts: int, trailing: int = 0
) -> None:
    old = getattr(module, name)
    size = old.shape[dim]
    if size == num_experts + trailing and trailing:
        # E routed rows, then T non-routed ones (shared/zero experts, a skip class): those are always kept, after
        # the kept experts, so the router's own `[:-T]` / `>= E` arithmetic still finds them.
        # Explicit device: a skeleton is shrunk inside a meta-device context, which would make `arange` meta.
        index = torch.cat([index, torch.arange(num_experts, size, dtype=torch.long, device=index.device)])
    elif size != num_experts:
        expected = f"{num_experts}" + (f" or {num_experts + trailing}" if trailing else "")
        raise ValueError(
            f"{type(module).__name__}.{name} has shape {tuple(old.shape)}, no expert axis {dim} of size "
            f"{expected}; check the family's adapter."
        )
    new = old.detach().index_select(dim, index.to(old.device)).contiguous()
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = new


def slice_block(block: MoEBlock, kept: list[int]) -> None:
    """Keep only experts `kept` (original indices, in this order) in `block`: every expert tensor of the experts
    module, the router rows (weight, bias, score-correction bias), the adapter's extra expert tensors, and every
    count attribute (`adapter.count_attrs`). Rows of the adapter's trailing non-routed classes are kept, after the
    experts. Works on meta tensors too (used to shrink a skeleton before a pruned checkpoint loads)."""
    num_experts, trailing = block.num_experts, block.trailing_rows
    if any(not 0 <= k < num_experts for k in kept) or len(set(kept)) != len(kept):
        raise ValueError(f"{block.name}: kept experts {kept} must be distinct indices below {num_experts}.")
    index = torch.as_tensor(kept, dtype=torch.long, device="cpu")
    experts = block.experts
    for module in block.expert_modules:
        for name in [*module._parameters, *module._buffers]:
            if getattr(module, name) is not None:
                _slice_tensor(module, name, index, 0, num_experts, trailing)
        if per_expert_modules(module, num_experts) is not None:
            _keep_children(module, kept)
    for path in block.adapter.flat_expert_tensors:  # [E * rows, ...] stored flat: slice as [E, rows, ...]
        module_path, _, name = path.rpartition(".")
        module = experts.get_submodule(module_path) if module_path else experts
        old = getattr(module, name)
        new = old.detach().view(num_experts, -1, *old.shape[1:]).index_select(0, index.to(old.device))
        module._parameters[name] = nn.Parameter(new.reshape(-1, *old.shape[1:]).contiguous(), old.requires_grad)
    for path, dim in block.adapter.expert_tensors():
        owner = tensor_owner(block, path)
        if owner is not None:
            _slice_tensor(*owner, index, dim, num_experts, trailing)
    counts = {num_experts: len(kept)}
    if trailing:
        counts[num_experts + trailing] = len(kept) + trailing  # LongCat-Flash's `total_experts`, Zaya's classes
    # Each module once: a count already rewritten must not be mapped again (kept + T may equal E).
    owners = {id(m): (m, block.adapter.count_attrs) for m in (block.module, block.router, *block.expert_modules)}
    if block.parent is not None:
        owners[id(block.parent)] = (block.parent, block.adapter.parent_count_attrs)
    for module, attrs in owners.values():
        for attr in attrs:
            # Only attributes that hold the expert count: OpenAI-privacy-filter's MLP names its top-k multiplier so.
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in counts:
                setattr(module, attr, counts[value])


def _keep_children(module: nn.Module, kept: list[int]) -> None:
    """Keep the per-expert children `kept` of a list/dict of experts, renumbered in that order under the names the
    first len(kept) experts had (`expert_0`, `expert_1`, ... in Switch Transformers), as a checkpoint of the smaller
    model names them."""
    names = list(module._modules)
    children = [module._modules[names[k]] for k in kept]
    for name in names:
        del module._modules[name]
    for name, child in zip(names, children, strict=False):
        module._modules[name] = child


def check_same_count(adapter: MoEAdapter, counts, allocation=None) -> None:
    """Refuse per-layer expert counts that differ (or an `allocation` that scores make differ) for a family whose
    model reads the count from the config all its layers share (`MoEAdapter.same_count`)."""
    counts = sorted(set(counts))
    record = ALLOCATIONS.get(allocation) if isinstance(allocation, str) else None
    scored = record is not None and not (record.fixed_counts or record.searches)  # a search keeps to equal counts
    if adapter.same_count and (len(counts) > 1 or scored):
        kept = f"allocation={allocation!r}" if scored else f"keeping {counts} experts per layer"
        same = " or ".join(repr(a.name) for a in ALLOCATIONS.values() if a.fixed_counts)
        raise ValueError(
            f"{adapter.model_type} must keep the same number of experts in every layer (its model reads the count "
            f"from the config all layers share); {kept} cannot: use allocation={same} without `ignore`."
        )


def set_expert_count(model: nn.Module, adapter: MoEAdapter, count: int) -> None:
    """Write `count` under every expert-count key of the family (so older transformers read it too) and on the model.

    Config aliases (`attribute_map`) would fold two keys into one, so the keys are written to the instance dict
    directly: config.json then carries all of them.
    """
    if not adapter.count_keys:  # no config key counts the routed experts alone (JetMoE): per-layer counts reload
        return
    config = text_config(model.config)
    for key in adapter.count_keys:
        *parents, leaf = key.split(".")  # nested sub-configs, e.g. DBRX's "ffn_config.moe_num_experts"
        target = config
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, count)
        target.__dict__[leaf] = count
    for module in model.modules():  # e.g. Qwen2MoeForCausalLM.num_experts, used by the load-balancing loss
        if isinstance(module, PreTrainedModel) and isinstance(getattr(module, "num_experts", None), int):
            module.num_experts = count
