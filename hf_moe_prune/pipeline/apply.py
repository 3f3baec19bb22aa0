"""Apply: reshape a model to the experts a plan keeps (compensating first where asked), patch its config and
remember the plan."""

from __future__ import annotations

import torch

from hf_moe_prune.adapters import find_blocks, get_adapter
from hf_moe_prune.calibration import LayerStats
from hf_moe_prune.compensation import CompensationContext
from hf_moe_prune.pipeline.checks import check_plan
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.registries import COMPENSATIONS, DEFAULT_COMPENSATION
from hf_moe_prune.reshape import narrow_experts, onloaded, set_expert_count, slice_block


def apply(
    model: torch.nn.Module,
    plan: PrunePlan,
    stats: dict[str, LayerStats] | None = None,
    compensation: str = DEFAULT_COMPENSATION,
    inputs: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Reshape `model` to the experts `plan` keeps (no calibration needed) and patch its config's expert count.

    `compensation` runs on each block before it is sliced, with its `stats` and calibration `inputs` if given.
    """
    blocks = {b.name: b for b in find_blocks(model)}
    check_plan(plan, list(blocks.values()))  # before any block is touched: a bad plan leaves the model as it was
    COMPENSATIONS.get(compensation)  # an unknown name raises here too
    for block_plan in plan.blocks:
        block = blocks[block_plan.name]
        with onloaded(model, block.module) as offloaded:  # accelerate-offloaded weights: sliced in its store
            if offloaded and block_plan.neurons:
                raise ValueError(
                    f"{block.name} is offloaded (device_map); neuron pruning rebuilds its experts module, which the "
                    "offload hooks cannot follow. Load it on one device or prune with streaming=True."
                )
            compensate_block(block, block_plan.kept, compensation, stats, inputs)
            slice_block(block, block_plan.kept)
            if block_plan.neurons:
                narrow_experts(block, block_plan.kept, block_plan.neurons)
    counts = {b.num_kept for b in plan.blocks}
    adapter = get_adapter(model)
    set_expert_count(model, adapter, max(counts))
    return model


def compensate_block(
    block,
    kept: list[int],
    compensation: str,
    stats: dict[str, LayerStats] | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
) -> None:
    """Run `compensation` on the still unsliced `block` for the experts `kept`, with the block's statistics and
    calibration inputs (as `apply` does before slicing, and `auto` before judging a compensated plan)."""
    if block.fixed_routing and len(kept) == block.num_experts:
        return  # a hash-routed block keeps every expert, and re-running it alone would lack the input ids it routes by
    context = CompensationContext(
        stats=None if stats is None else stats.get(block.name),
        inputs=None if inputs is None else inputs.get(block.name),
    )
    COMPENSATIONS.get(compensation)(block, kept, context)
