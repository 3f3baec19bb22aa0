"""Experts of different widths in one layer: the layer's experts grouped by width, each group a fused tensor.

Fused `[E, 2I, hidden]` tensors cannot hold experts of different intermediate widths, and zero-padding them keeps the
memory. `WidthGroupedExperts` replaces a block's experts module by one instance of the family's *own* experts class per
distinct width (a copy of the original module holding only that group's experts, narrowed to that width), so every
group runs the model's own forward and its `experts_implementation` (eager, `grouped_mm`, `batched_mm`) unchanged.
The router is untouched: every expert stays reachable, which is the point of neuron pruning.

Each (token, slot) pair goes to the group of its expert as a top-1 call with the model's gate; the outputs are added
back per token. The work is the same matrix products as the stock forward over the same parameters, plus one gather
and one scatter per group.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from hf_moe_prune.reshape.neuron_layout import WIDTH_ATTRIBUTES, neuron_layout


def _group_module(experts: nn.Module, members: list[int], neurons: list[list[int]]) -> nn.Module:
    """A copy of `experts` holding only experts `members`, expert `members[j]` narrowed to neurons `neurons[j]`."""
    layout = neuron_layout(experts)
    axes = layout.tensor_axes()
    tensors = {**experts._parameters, **experts._buffers}
    memo = {id(t): t for t in tensors.values() if t is not None}  # shared, then replaced: never copy the weights
    if hasattr(experts, "config"):
        memo[id(experts.config)] = experts.config  # one config, so `set_experts_implementation` reaches every group
    group = copy.deepcopy(experts, memo)
    expert_index = torch.as_tensor(members, dtype=torch.long)
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if name in axes:
            axis, up = axes[name]
            rows = []
            for expert, kept in zip(members, neurons):
                kept_index = torch.as_tensor(kept, dtype=torch.long)
                slots = layout.up_slots(kept_index) if up else kept_index
                rows.append(tensor.detach()[expert].index_select(axis - 1, slots.to(tensor.device)))
            new = torch.stack(rows).contiguous()
        else:
            new = tensor.detach().index_select(0, expert_index.to(tensor.device)).contiguous()
        if name in experts._parameters:
            group._parameters[name] = nn.Parameter(new, requires_grad=tensor.requires_grad)
        else:
            group._buffers[name] = new
    group.num_experts = len(members)
    width = len(neurons[0])
    for attribute in WIDTH_ATTRIBUTES:
        if getattr(experts, attribute, None) == layout.width and not isinstance(getattr(experts, attribute), bool):
            setattr(group, attribute, width)
    return group


class WidthGroupedExperts(nn.Module):
    """Routed experts of one MoE layer stored as groups of equal intermediate width.

    Called like the experts module it replaces: `forward(hidden_states, top_k_index, top_k_weights)` with indices in
    `[0, num_experts)`. `widths[e]` is expert `e`'s intermediate width; group `g` holds the experts of the `g`-th
    largest width in ascending expert order, so the layout follows from `widths` alone (that is what a checkpoint
    stores in its config to be rebuilt).

    Args:
        groups (`list[nn.Module]`): One experts module (the family's own class) per distinct width.
        widths (`list[int]`): Intermediate width of every expert, in expert order.
    """

    def __init__(self, groups: Sequence[nn.Module], widths: Sequence[int]):
        super().__init__()
        self.groups = nn.ModuleList(groups)
        self.widths = [int(w) for w in widths]
        self.num_experts = len(self.widths)
        # Group of each expert and its index there: plain tensors derived from `widths`, built at the first forward on
        # the routing's device (buffers would be left uninitialized when a checkpoint loads into a meta skeleton).
        self._maps: torch.Tensor | None = None

    def _routing_maps(self, device: torch.device) -> torch.Tensor:
        if self._maps is None or self._maps.device != device:
            maps = torch.empty(2, self.num_experts, dtype=torch.long, device="cpu")
            for g, (_, members) in enumerate(_group_members(self.widths)):
                maps[0, members] = g
                maps[1, members] = torch.arange(len(members), device="cpu")
            self._maps = maps.to(device)
        return self._maps

    @property
    def config(self):
        return getattr(self.groups[0], "config", None)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, *args):
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        index = top_k_index.reshape(flat.shape[0], -1)
        weights = top_k_weights.reshape(index.shape)
        # Expert-parallel sentinels (index >= num_experts) belong to no group, as in the stock forward.
        group_of, local_index = self._routing_maps(index.device)
        valid = index < self.num_experts
        group = torch.where(valid, group_of[index.clamp(max=self.num_experts - 1)], -1)
        out = torch.zeros_like(flat)
        for g, module in enumerate(self.groups):
            token, slot = (group == g).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            local = local_index[index[token, slot]].unsqueeze(-1)
            gated = module(flat[token], local, weights[token, slot].unsqueeze(-1), *args)
            out.index_add_(0, token, gated.to(out.dtype))
        return out.view(shape)

    def extra_repr(self) -> str:
        counts = {w: self.widths.count(w) for w in sorted(set(self.widths), reverse=True)}
        return "widths: " + ", ".join(f"{n}×{w}" for w, n in counts.items())


def _group_members(widths: Sequence[int]) -> list[tuple[int, list[int]]]:
    """`[(width, [expert indices])]`, widest group first, members ascending."""
    return [(w, [e for e, x in enumerate(widths) if x == w]) for w in sorted(set(widths), reverse=True)]


def prune_neurons(experts: nn.Module, neurons: dict[int, list[int]]) -> WidthGroupedExperts:
    """Build the width-grouped replacement of `experts` keeping, for expert `e` in `neurons`, only its intermediate
    neurons `neurons[e]` (original neuron indices); the other experts keep all. Works on meta tensors too (used to
    shape a skeleton before a neuron-pruned checkpoint loads).

    Raises:
        `ValueError`: the family's experts do not describe their layout, or a neuron list is empty or out of range.
    """
    if isinstance(experts, WidthGroupedExperts):
        raise ValueError("These experts are already neuron-pruned; prune neurons of the original model instead.")
    layout = neuron_layout(experts)
    num_experts = int(getattr(experts, "num_experts", None) or experts.down_proj.shape[0])
    kept = {}
    for e in range(num_experts):
        chosen = sorted(int(i) for i in neurons.get(e, range(layout.width)))
        if not chosen or chosen[0] < 0 or chosen[-1] >= layout.width or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"expert {e}: kept neurons must be distinct indices below {layout.width}, at least one; got {chosen}."
            )
        kept[e] = chosen
    widths = [len(kept[e]) for e in range(num_experts)]
    groups = [_group_module(experts, members, [kept[e] for e in members]) for _, members in _group_members(widths)]
    return WidthGroupedExperts(groups, widths)


def narrow_experts(block, kept: list[int], neurons: dict[int, list[int]]) -> None:
    """Give `block` (its experts already sliced to `kept`, in that order) width-grouped experts keeping, for original
    expert `e`, only neurons `neurons[e]`."""
    position = {expert: i for i, expert in enumerate(kept)}
    narrowed = {position[e]: chosen for e, chosen in neurons.items()}
    setattr(block.module, block.adapter.experts, prune_neurons(block.experts, narrowed))
    # Some families initialise the experts from the block (Qwen3-Omni: `module.experts.gate_up_proj`), which grouped
    # experts do not have; their weights come from the checkpoint, so transformers must not re-initialise the block.
    block.module._is_hf_initialized = True
