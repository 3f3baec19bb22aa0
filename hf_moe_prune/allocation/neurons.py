"""Neuron allocation: which experts stay whole, which are dropped, and how many neurons the others keep.

Per MoE layer `l` (position `t` from 0 at the first pruned layer to 1 at the last):

* `drop_experts` (default 0): the fraction of the layer's experts removed whole (lowest expert scores first), so
  neuron pruning combines with whole-expert pruning under one budget; layers with fixed routing (DeepSeek-V4's hash
  layers) drop none;
* `keep_whole` (a number, or `(shallow, deep)` endpoints): the fraction of the layer's experts kept whole (highest
  expert scores), linear in `t`;
* every other expert keeps a fraction `kappa_l` of its intermediate neurons (highest neuron scores), with
  `kappa_l = shallow + (deep - shallow) * t + delta` from the `neuron_keep=(shallow, deep)` line. Its slope is kept
  and `delta` is solved so that the total removed equals `floor(ratio x routed-expert neurons)` exactly; the
  rounding is repaired one step at a time across experts, so a layer holds at most three widths. Widths are multiples
  of `multiple_of` (default 8: `grouped_mm` needs 16-byte aligned rows in fp32 and bf16), and the budget is then the
  largest multiple of it not above `ratio` of the neurons; `multiple_of=1` meets `ratio` to the single neuron.

The "trapezoid" allocation (TENP's) grows both fractions from shallow to deep layers; "uniform" keeps them flat.
Every intermediate neuron of a routed expert carries the same number of parameters within a model (a row of the gate
and up projections and a column of the down projection), so the neuron budget is the routed-expert parameter budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hf_moe_prune.adapters import MoEBlock
from hf_moe_prune.allocation.budget import check_groups, is_ignored, select_experts
from hf_moe_prune.registries import NEURON_SCORES, SCHEDULE_KEYS, register_allocation, schedule_options
from hf_moe_prune.reshape.neuron_layout import neuron_layout

__all__ = ["NEURON_SCORES", "SCHEDULE_KEYS", "NeuronDecision", "check_schedule", "neuron_plan", "schedule_options"]

register_allocation(
    "trapezoid",
    units=("neuron",),
    schedule={"keep_whole": (0.125, 0.375), "neuron_keep": (0.4, 0.6)},
    description="TENP's neuron schedule: the shares kept whole and the neurons kept grow from shallow to deep layers",
)(None)


@dataclass
class NeuronDecision:
    """What one block keeps: experts (original indices) and, for narrowed experts, their kept neurons."""

    kept: list[int]
    neurons: dict[int, list[int]] = field(default_factory=dict)
    width: int = 0


def _line(pair: tuple[float, float], t: float) -> float:
    return pair[0] + (pair[1] - pair[0]) * t


@dataclass
class _Layer:
    block: MoEBlock
    t: float
    width: int
    drop: int
    whole: int

    @property
    def pruned(self) -> int:
        return self.block.num_experts - self.drop - self.whole


def _layers(blocks: list[MoEBlock], options: dict[str, Any]) -> list[_Layer]:
    layers = []
    for i, block in enumerate(blocks):
        t = i / (len(blocks) - 1) if len(blocks) > 1 else 0.0
        num = block.num_experts
        # A block routed by a fixed table (hash routing) drops no experts: its tokens would go to removed ones.
        drop = 0 if block.fixed_routing else math.floor(float(options["drop_experts"]) * num + 1e-9)
        if drop:
            check_groups(block, num - drop)
            if num - drop < block.top_k:
                raise ValueError(
                    f"drop_experts={options['drop_experts']} leaves layer {block.layer_idx} {num - drop} experts, "
                    f"fewer than its top-k={block.top_k}: drop fewer experts."
                )
        whole = min(num - drop, round(_line(options["keep_whole"], t) * num))
        layers.append(_Layer(block, t, neuron_layout(block.experts).width, drop, whole))
    return layers


def check_schedule(blocks: list[MoEBlock], ratio: float, ignore: list, options: dict[str, Any]) -> None:
    """Before calibration: the budget can be met with these options (scores do not change feasibility)."""
    _solve(_layers([b for b in blocks if not is_ignored(b, ignore)], options), ratio, options)


def _solve(layers: list[_Layer], ratio: float, options: dict[str, Any]) -> tuple[dict[str, list[int]], dict]:
    """Per layer, the widths of its narrowed experts (most important first) that meet the budget exactly.

    Widths move in steps of `multiple_of` neurons (fused-expert kernels such as `grouped_mm` need 16-byte aligned
    rows), so the budget is the largest multiple of `multiple_of` neurons not above `ratio` of the total.
    """
    m = options["multiple_of"]
    for layer in layers:
        if layer.width % m:
            raise ValueError(
                f"Layer {layer.block.layer_idx}: its experts have {layer.width} intermediate neurons, not a multiple "
                f"of multiple_of={m}; set method_kwargs['multiple_of'] to a divisor of {layer.width}."
            )
    if not layers:
        raise ValueError("ignore= leaves every MoE layer whole: nothing would be pruned. Ignore fewer layers.")
    total = sum(layer.block.num_experts * layer.width for layer in layers)
    budget = m * math.floor(ratio * total / m + 1e-9)
    if budget == 0:
        raise ValueError(
            f"ratio={ratio} removes no neuron: {ratio} × {total} routed-expert neurons rounds down to 0 in steps of "
            f"multiple_of={m}. Use a ratio of at least {m / total:.3g}."
        )
    units_budget = (budget - sum(layer.drop * layer.width for layer in layers)) // m
    if units_budget < 0:
        raise ValueError(
            f"drop_experts={options['drop_experts']} alone removes more than ratio={ratio} of the routed-expert "
            "parameters: lower drop_experts or raise ratio."
        )
    least = {layer.block.name: min(-(-options["min_neurons"] // m), layer.width // m) for layer in layers}
    capacity = sum(layer.pruned * (layer.width // m - least[layer.block.name]) for layer in layers)
    if units_budget > capacity:
        most = (capacity * m + sum(layer.drop * layer.width for layer in layers)) / total
        raise ValueError(
            f"ratio={ratio} cannot be met: keeping keep_whole={options['keep_whole']} of the experts whole (and at "
            f"least {options['min_neurons']} neuron(s) in every other expert) removes at most {most:.3f} of the "
            "routed-expert parameters. Lower keep_whole, raise drop_experts, or use a smaller ratio."
        )

    def kappa(layer: _Layer, delta: float) -> float:
        low = least[layer.block.name] * m / layer.width
        return min(1.0, max(low, _line(options["neuron_keep"], layer.t) + delta))

    def removed(delta: float) -> float:
        return sum(layer.pruned * layer.width * (1 - kappa(layer, delta)) for layer in layers) / m

    low, high = -2.0, 2.0  # removed() falls from its maximum to 0 over this range of shifts
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if removed(mid) > units_budget else (low, mid)
    delta = (low + high) / 2
    units, residual = {}, []
    for layer in layers:
        exact = kappa(layer, delta) * layer.width / m
        size = min(layer.width // m, max(least[layer.block.name], round(exact)))
        units[layer.block.name] = [size] * layer.pruned
        residual.append((size - exact, layer))
    missing = units_budget - sum(layer.pruned * layer.width // m - sum(units[layer.block.name]) for layer in layers)
    # Repair the rounding one step per expert, in the layers rounded furthest from their exact width first; take
    # from the least important narrowed experts, give to the most important.
    step = 1 if missing > 0 else -1
    order = sorted(residual, key=lambda r: -step * r[0])
    while missing:
        changed = False
        for _, layer in order:
            row = units[layer.block.name]
            for j in range(len(row) - 1, -1, -1) if step > 0 else range(len(row)):
                if missing and least[layer.block.name] <= row[j] - step <= layer.width // m:
                    row[j] -= step
                    missing -= step
                    changed = True
        if not changed:
            raise RuntimeError("neuron budget repair did not converge")  # capacity was checked above
    widths = {name: [u * m for u in row] for name, row in units.items()}
    record = {
        "budget_neurons": budget,
        "multiple_of": m,
        "total_neurons": total,
        "neuron_keep_solved": [round(_line(options["neuron_keep"], t) + delta, 6) for t in (0.0, 1.0)],
        "keep_whole": list(options["keep_whole"]),
        "drop_experts": float(options["drop_experts"]),
    }
    return widths, record


def neuron_plan(
    blocks: list[MoEBlock],
    expert_scores: dict[str, torch.Tensor],
    neuron_scores: dict[str, torch.Tensor],
    ratio: float,
    ignore: list,
    options: dict[str, Any],
) -> tuple[dict[str, NeuronDecision], dict]:
    """Decide every block's dropped, whole and narrowed experts and the narrowed experts' neurons.

    Args:
        expert_scores: `{block name: [E]}`, higher = more important (kept whole first, dropped last).
        neuron_scores: `{block name: [E, I]}`, higher = more important neuron.

    Returns:
        `({block name: NeuronDecision}, schedule record)`; ignored blocks keep everything.
    """
    active = [b for b in blocks if not is_ignored(b, ignore)]
    layers = _layers(active, options)
    widths, record = _solve(layers, ratio, options)
    decisions = {b.name: NeuronDecision(list(range(b.num_experts))) for b in blocks}
    per_layer = []
    for layer in layers:
        block = layer.block
        scores = expert_scores[block.name].double()
        kept = select_experts(scores, block.num_experts - layer.drop, block.groups[0])
        ranked = sorted(kept, key=lambda e: (-float(scores[e]), e))
        narrowed = ranked[layer.whole :]
        decision = NeuronDecision(kept, width=layer.width)
        table = neuron_scores[block.name].double()
        for expert, width in zip(narrowed, widths[block.name]):
            if width < layer.width:
                order = torch.sort(table[expert], descending=True, stable=True).indices
                decision.neurons[expert] = sorted(order[:width].tolist())
        decisions[block.name] = decision
        per_layer.append(
            {
                "layer": block.layer_idx,
                "dropped": layer.drop,
                "whole": layer.whole,
                "widths": sorted(set(widths[block.name])),
            }
        )
    record["layers"] = per_layer
    return decisions, record
