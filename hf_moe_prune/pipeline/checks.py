"""Checks of a plan against the model it is applied to, and of a pruned checkpoint's metadata against the model
skeleton, before any block is touched or any weight is read (see `hf_moe_prune.validation` for the JSON checks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hf_moe_prune.allocation import check_groups, layer_floor
from hf_moe_prune.plan import BlockPlan
from hf_moe_prune.registry import closest
from hf_moe_prune.reshape import check_same_count, neuron_layout
from hf_moe_prune.validation import (
    _check_int,
    _check_type,
    _show,
    check_block_dict,
)


def _check_keep(block, kept: int | list[int], path: str) -> None:
    """`block` can keep `kept` experts (a count, or the indices of a plan): top-k, expert groups, hash routing."""
    keep, num, (n_group, _) = (kept if isinstance(kept, int) else len(kept)), block.num_experts, block.groups
    if keep == num:
        return
    if keep > num:
        raise ValueError(f"{path}: {block.name} has {num} experts and cannot keep {keep}; keep at most {num}.")
    if block.fixed_routing:
        raise ValueError(f"{path}: {block.name} picks experts from a fixed table (hash routing): it keeps all {num}.")
    floor = layer_floor(block)
    if keep < floor:
        raise ValueError(
            f"{path}: {block.name} would keep {keep} of {num} experts but routes every token to top-k={block.top_k} "
            f"experts{' within expert groups' if n_group > 1 else ''}: keep at least {floor} experts there."
        )
    try:
        check_groups(block, keep)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if n_group > 1 and not isinstance(kept, int):  # slicing regroups contiguously: each group must keep as many
        size = num // n_group
        counts = [sum(1 for e in kept if e // size == g) for g in range(n_group)]
        if len(set(counts)) > 1:
            raise ValueError(
                f"{path}: {block.name} routes within {n_group} expert groups of {size}; every group must keep "
                f"{keep // n_group} experts, but they keep {counts}."
            )


def _known(blocks: dict[str, Any], name: Any, path: str):
    _check_type(name, str, path, "a block name string")
    if name not in blocks:
        close = closest(name, blocks)
        hint = f" Did you mean {close!r}?" if close else f" It has {len(blocks)} MoE blocks: {_show(list(blocks))}."
        raise ValueError(f"{path}: names MoE block {name!r}, which this model does not have.{hint}")
    return blocks[name]


def check_plan(plan, blocks: list) -> None:
    """Check a `PrunePlan` against the model's MoE blocks before any block is touched.

    Every plan block must exist with the same expert count, keep at least the block's floor (its top-k, and the
    expert-group rules of group-limited routing, with the same number of experts in every group), and narrow its
    experts within their width; families that share one expert count across layers must keep the same count everywhere.

    Args:
        plan (`PrunePlan`): The plan to apply.
        blocks (`list[MoEBlock]`): The model's MoE blocks (`find_blocks(model)`).

    Raises:
        `TypeError` / `ValueError`: the plan does not fit this model, or would leave a layer unable to route.
    """
    by_name = {b.name: b for b in blocks}
    if not plan.blocks:
        raise ValueError("blocks: the plan has no MoE block.")
    names = set()
    for i, block_plan in enumerate(plan.blocks):
        path = f"blocks[{i}]"
        # Plans built in code skip check_plan_dict: their structure is checked here (not their free-form metadata).
        fields = vars(block_plan) if hasattr(block_plan, "__dict__") else block_plan
        check_block_dict(fields, path, [f.name for f in dataclasses.fields(BlockPlan)], scores=False)
        if block_plan.name in names:
            raise ValueError(f"{path}.name: block {block_plan.name!r} is listed twice.")
        names.add(block_plan.name)
        block = _known(by_name, block_plan.name, f"{path}.name")
        if block.num_experts != block_plan.num_experts:
            raise ValueError(
                f"{path}: {block.name} has {block.num_experts} experts but the plan was made for "
                f"{block_plan.num_experts}."
            )
        _check_keep(block, block_plan.kept, f"{path}.kept")
        if block_plan.neurons:
            width = neuron_layout(block.experts).width
            if block_plan.intermediate_size != width:
                raise ValueError(
                    f"{path}.intermediate_size: the plan was made for experts {block_plan.intermediate_size} neurons "
                    f"wide, but {block.name}'s are {width}."
                )
    check_same_count(blocks[0].adapter, [len(b.kept) for b in plan.blocks])


def check_pruned_metadata(blocks: list, experts_per_layer: Any, expert_widths: Any, prefix="quantization_config"):
    """Check a pruned checkpoint's per-block expert counts and widths against the model skeleton, before it is shrunk.

    Each count must be an int between the block's floor (top-k, expert groups) and the skeleton block's own expert
    count (the expert dimension of its tensors); each width list holds one int per kept expert, 1 to the experts'
    intermediate width. Nothing is allocated from these numbers before they pass.

    Args:
        blocks (`list[MoEBlock]`): The skeleton's MoE blocks.
        experts_per_layer (`dict[str, int]`, *optional*): `{block name: kept expert count}` from the checkpoint.
        expert_widths (`dict[str, list[int]]`, *optional*): `{block name: width of every kept expert}`.
        prefix (`str`, *optional*, defaults to `"quantization_config"`): Where the fields live, for the messages.

    Raises:
        `TypeError` / `ValueError`: a field has a wrong type or value (the message names it).
    """
    by_name = {b.name: b for b in blocks}
    counts = {}
    field = f"{prefix}.experts_per_layer"
    _check_type(experts_per_layer, Mapping, field, "an object {block name: expert count}", optional=True)
    for name, count in (experts_per_layer or {}).items():
        path = f"{field}[{_show(name)}]"
        block = _known(by_name, name, path)
        # Bounded by the skeleton's own expert count (its config's, the shape of its tensors), never by the file.
        _check_int(count, path, "an int expert count", 1, block.num_experts)
        _check_keep(block, count, path)
        counts[name] = count
    field = f"{prefix}.expert_widths"
    _check_type(expert_widths, Mapping, field, "an object {block name: expert widths}", optional=True)
    for name, widths in (expert_widths or {}).items():
        path = f"{field}[{_show(name)}]"
        block = _known(by_name, name, path)
        _check_type(widths, (list, tuple), path, "a list of expert widths")
        expected = counts.get(name, block.num_experts)
        if len(widths) != expected:
            raise ValueError(f"{path}: expected one width per kept expert ({expected}), got {len(widths)}.")
        try:
            width = neuron_layout(block.experts).width
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        for i, value in enumerate(widths):
            _check_int(value, f"{path}[{i}]", "an int expert width", 1, width)


def check_saved_plan(plan, blocks: list, source: str) -> None:
    """Check that the plan file of a loaded pruned checkpoint describes its weights (a re-save writes its counts).

    Args:
        plan (`PrunePlan`): The plan read from the checkpoint.
        blocks (`list[MoEBlock]`): The loaded model's MoE blocks.
        source (`str`): The plan file, for the messages.

    Raises:
        `ValueError`: the plan names other blocks or other expert counts than the checkpoint holds.
    """
    by_name = {b.name: b for b in blocks}
    for i, block_plan in enumerate(plan.blocks):
        block = _known(by_name, block_plan.name, f"{source}: blocks[{i}].name")
        if block.num_experts != block_plan.num_kept:
            raise ValueError(
                f"{source}: blocks[{i}] keeps {block_plan.num_kept} experts of {block.name}, but the checkpoint's "
                f"weights hold {block.num_experts}: the plan file does not describe this checkpoint."
            )
