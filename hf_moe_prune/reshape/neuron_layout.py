"""Where the intermediate neurons of fused experts live, read from the experts module itself.

transformers 5 experts classes decorated with `use_experts_implementation` describe their own layout with four
flags: `has_gate` (a fused `gate_up_proj`, or only `up_proj`), `is_transposed` (`[E, hidden, out]` instead of
`[E, out, hidden]`), `is_concatenated` (gate rows then up rows, or gate/up interleaved per neuron) and `has_bias`.
From them this module knows, for every expert tensor, which axis holds the intermediate neurons and which slots of it
belong to neuron `i`, so neuron pruning needs no per-family code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Int attributes experts classes use for their intermediate width (updated when a group of narrower experts is built).
WIDTH_ATTRIBUTES = ("intermediate_dim", "intermediate_size", "expert_dim", "moe_intermediate_size")


@dataclass(frozen=True)
class NeuronLayout:
    """How one fused experts module stores its intermediate neurons.

    Args:
        has_gate (`bool`): `gate_up_proj` holds gate and up projections; otherwise `up_proj` alone.
        transposed (`bool`): Weights are `[E, in, out]` (`x @ W`) rather than `[E, out, in]` (`F.linear`).
        concatenated (`bool`): Gate rows `[0, I)` then up rows `[I, 2I)`; otherwise interleaved `2i` (gate), `2i+1`.
        has_bias (`bool`): `*_proj_bias` tensors exist.
        width (`int`): Intermediate neurons per expert, `I`.
    """

    has_gate: bool
    transposed: bool
    concatenated: bool
    has_bias: bool
    width: int

    @property
    def up_name(self) -> str:
        return "gate_up_proj" if self.has_gate else "up_proj"

    def up_axis(self) -> int:
        """Axis of `gate_up_proj` / `up_proj` that holds the (gate and up) output rows."""
        return 2 if self.transposed else 1

    def down_axis(self) -> int:
        """Axis of `down_proj` that holds the intermediate neurons."""
        return 1 if self.transposed else 2

    def up_slots(self, neurons: torch.Tensor) -> torch.Tensor:
        """Positions along the up axis that belong to `neurons` (gate and up rows of each, in the stored order)."""
        if not self.has_gate:
            return neurons
        if self.concatenated:
            return torch.cat([neurons, neurons + self.width])
        return torch.stack([2 * neurons, 2 * neurons + 1], dim=-1).reshape(-1)

    def tensor_axes(self) -> dict[str, tuple[int, bool]]:
        """`{tensor name: (neuron axis, up-projection layout?)}` for every tensor that has a neuron axis."""
        axes = {self.up_name: (self.up_axis(), True), "down_proj": (self.down_axis(), False)}
        if self.has_bias:
            axes[f"{self.up_name}_bias"] = (1, True)  # `[E, 2I]`; `down_proj_bias` is `[E, hidden]`: no neuron axis
        return axes


def neuron_layout(experts: nn.Module) -> NeuronLayout:
    """Read the layout of `experts`, or raise a `ValueError` saying why its neurons cannot be pruned."""
    if not hasattr(experts, "has_gate") or not isinstance(getattr(experts, "down_proj", None), torch.Tensor):
        raise ValueError(
            f"{type(experts).__name__} does not describe its fused expert layout (transformers' "
            "`use_experts_implementation`), so its intermediate neurons cannot be pruned; prune whole experts "
            "(unit='expert') for this family."
        )
    transposed = bool(experts.is_transposed)
    down = experts.down_proj
    width = int(down.shape[1] if transposed else down.shape[2])
    has_gate = bool(experts.has_gate)
    concatenated = getattr(experts, "is_concatenated", None)
    if concatenated is None:  # transformers < 5.6 does not say: ask the gate function itself
        concatenated = _probe_concatenated(experts) if has_gate else True
    return NeuronLayout(has_gate, transposed, bool(concatenated), bool(experts.has_bias), width)


@torch.no_grad()
def _probe_concatenated(experts: nn.Module) -> bool:
    """Whether `experts._apply_gate` pairs column `i` with `i + I` (gate rows, then up rows) or `2i` with `2i + 1`."""
    # Explicitly on the CPU: this also runs while a meta-device skeleton is being built.
    probe = torch.rand(1, 8, generator=torch.Generator().manual_seed(0), device="cpu") + 0.5
    base = experts._apply_gate(probe)
    depends = []
    for column in range(8):
        moved = probe.clone()
        moved[0, column] += 0.25
        depends.append(int((experts._apply_gate(moved) - base).abs().argmax()))
    if depends == [0, 1, 2, 3, 0, 1, 2, 3]:
        return True
    if depends == [0, 0, 1, 1, 2, 2, 3, 3]:
        return False
    raise ValueError(f"{type(experts).__name__}: cannot tell how its gate function pairs gate and up projections.")


def slice_neurons(experts: nn.Module, layout: NeuronLayout, neurons: list[int]) -> dict[str, torch.Tensor]:
    """The expert tensors of `experts` restricted to intermediate `neurons` (same for every expert of the module)."""
    index = torch.as_tensor(neurons, dtype=torch.long)
    out = {}
    for name, (axis, up) in layout.tensor_axes().items():
        tensor = getattr(experts, name)
        slots = layout.up_slots(index) if up else index
        out[name] = tensor.detach().index_select(axis, slots.to(tensor.device)).contiguous()
    return out


def _weight(tensor: torch.Tensor, expert: int, transposed: bool) -> torch.Tensor:
    """Expert `expert`'s matrix in `F.linear` orientation `[out, in]`."""
    weight = tensor[expert]
    return weight.t() if transposed else weight


def expert_intermediate(
    experts: nn.Module, layout: NeuronLayout, rows: torch.Tensor, expert: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intermediate activations `a(h)` `[n, I]` and output `f(h)` `[n, hidden]` of one expert on `rows` `[n, hidden]`.

    Uses the module's own gate function (`_apply_gate`, e.g. GPT-OSS's clamped SwiGLU) or activation and its optional
    post-expert norm, so `f` is what the model computes; tests check it against the module's forward for every family.
    """
    up = _weight(getattr(experts, layout.up_name), expert, layout.transposed)
    bias = getattr(experts, f"{layout.up_name}_bias")[expert] if layout.has_bias else None
    projected = F.linear(rows, up, bias)
    active = experts._apply_gate(projected) if layout.has_gate else experts.act_fn(projected)
    down_bias = experts.down_proj_bias[expert] if layout.has_bias else None
    output = F.linear(active, _weight(experts.down_proj, expert, layout.transposed), down_bias)
    if getattr(experts, "has_post_expert_norm", False):
        output = experts.post_expert_norm(output)
    return active, output


def down_columns(experts: nn.Module, layout: NeuronLayout, expert: int) -> torch.Tensor:
    """`W_d` of one expert as `[hidden, I]`: column `i` is what neuron `i` writes into the expert output."""
    return _weight(experts.down_proj, expert, layout.transposed)
