"""`LayerStats`: sum-reducible statistics of one MoE block, so batches, devices and processes add up."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hf_moe_prune.calibration.vocabulary import NEURON_STATISTICS, PAIR_STATISTICS


class LayerStats:
    """Named float64 sums over the routed (token, expert) pairs of one MoE block, plus the token count.

    Per-expert statistics are `[E]`; per-neuron statistics (`hf_moe_prune.calibration.vocabulary.NEURON_STATISTICS`)
    `[E, width]`; per-pair statistics (`hf_moe_prune.calibration.vocabulary.PAIR_STATISTICS`) `[E, E]`. All are sums,
    so `merge_` adds them up whatever their shape.

    Args:
        num_experts (`int`): Number of routed experts of the block.
        names (`Iterable[str]`): Statistics to hold (see `hf_moe_prune.calibration.vocabulary.STATISTICS`).
        width (`int`, *optional*): Intermediate neurons per expert, for per-neuron statistics (without it they are
            created, zero, at their first `add_`).
    """

    def __init__(self, num_experts: int, names: Iterable[str] = (), width: int | None = None):
        self.num_experts = num_experts
        self.tensors: dict[str, torch.Tensor] = {}
        for name in names:
            if name in NEURON_STATISTICS:
                if width is None:
                    continue
                shape = (num_experts, width)
            elif name in PAIR_STATISTICS:
                shape = (num_experts, num_experts)
            else:
                shape = (num_experts,)
            self.tensors[name] = torch.zeros(shape, dtype=torch.float64)
        self.tokens = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise KeyError(f"statistic {name!r} was not collected; collected: {sorted(self.tensors)}")
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def add_(self, name: str, index: torch.Tensor, values: torch.Tensor) -> None:
        """`stats[name][index[i]] += values[i]`, on the device of the values (moved to it on first use)."""
        current = self.tensors.get(name)
        if current is None:
            current = self.tensors[name] = torch.zeros(
                (self.num_experts, *values.shape[1:]), dtype=torch.float64, device=values.device
            )
        if current.device != values.device:
            current = self.tensors[name] = current.to(values.device)
        current.index_add_(0, index, values.to(torch.float64))

    def add_pairs_(self, name: str, index: torch.Tensor, values: torch.Tensor) -> None:
        """`stats[name].view(-1)[index[i]] += values[i]` for an `[E, E]` statistic, `index` being the flattened pair
        index `first * E + second`; on the device of the values (moved to it on first use)."""
        num = self.num_experts
        current = self.tensors.get(name)
        if current is None:
            current = self.tensors[name] = torch.zeros((num, num), dtype=torch.float64, device=values.device)
        if current.device != values.device or not current.is_contiguous():
            current = self.tensors[name] = current.to(values.device).contiguous()
        current.view(-1).index_add_(0, index, values.to(torch.float64))

    def merge_(self, other: LayerStats) -> LayerStats:
        """Add another block's sums (from another batch, device or process) into this one."""
        for name, value in other.tensors.items():
            mine = self.tensors.setdefault(name, torch.zeros_like(value))
            self.tensors[name] = mine.to(value.device) + value
        self.tokens += other.tokens
        return self

    def cpu(self) -> LayerStats:
        self.tensors = {k: v.cpu() for k, v in self.tensors.items()}
        return self

    def to_dict(self) -> dict:
        return {
            "num_experts": self.num_experts,
            "tokens": self.tokens,
            **{k: v.tolist() for k, v in self.tensors.items()},
        }
