"""`PrunePlan`: the record of what was pruned, passed from deciding to reshaping and saved with the model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_FILE = "moe_pruning_plan.json"


@dataclass
class BlockPlan:
    """Experts one MoE block keeps.

    Args:
        name (`str`): Module path of the MoE block (e.g. `model.layers.3.mlp`).
        layer_idx (`int`): Decoder-layer index.
        num_experts (`int`): Routed experts before pruning.
        kept (`list[int]`): Original indices of the kept experts, ascending (their new order).
        scores (`list[float]`, *optional*): The method's score of every original expert.
        neurons (`dict[int, list[int]]`, *optional*): For experts narrowed by neuron pruning: original expert index →
            its kept intermediate neurons (original indices, ascending). Kept experts not listed keep all neurons.
        intermediate_size (`int`, *optional*): Intermediate neurons per expert before pruning (with `neurons`).
    """

    name: str
    layer_idx: int
    num_experts: int
    kept: list[int]
    scores: list[float] | None = None
    neurons: dict[int, list[int]] | None = None
    intermediate_size: int | None = None

    def __post_init__(self):
        if self.neurons is not None:  # JSON object keys are strings
            self.neurons = {int(k): list(v) for k, v in self.neurons.items()}
            unknown = set(self.neurons) - set(self.kept)
            if unknown:
                raise ValueError(f"{self.name}: neuron lists for experts {sorted(unknown)} that are not kept.")

    @property
    def num_kept(self) -> int:
        return len(self.kept)

    @property
    def widths(self) -> list[int] | None:
        """Intermediate width of every kept expert in its new order, or None when no neuron was pruned."""
        if not self.neurons:
            return None
        return [len(self.neurons[e]) if e in self.neurons else self.intermediate_size for e in self.kept]


@dataclass
class PrunePlan:
    """Per-block kept experts plus how they were chosen; JSON round-trips and replays without calibration."""

    method: str
    model_type: str
    blocks: list[BlockPlan]
    ratio: float | None = None
    base_model: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    stats_seconds: float | None = None
    parameters: dict[str, int] = field(default_factory=dict)
    unit: str = "expert"
    neuron_schedule: dict[str, Any] | None = None

    @property
    def is_uniform(self) -> bool:
        """Every block keeps the same number of experts at full width, in a family whose config counts its routed
        experts (JetMoE's does not): a stock config can express the result."""
        from .adapters import ADAPTERS

        counted = self.model_type not in ADAPTERS or bool(ADAPTERS.get(self.model_type).count_keys)
        return counted and len({b.num_kept for b in self.blocks}) <= 1 and not self.expert_widths

    @property
    def expert_widths(self) -> dict[str, list[int]]:
        """`{block name: width of every kept expert}` for the blocks whose experts have different widths."""
        return {b.name: b.widths for b in self.blocks if b.widths is not None}

    @property
    def experts_per_layer(self) -> dict[str, int]:
        return {b.name: b.num_kept for b in self.blocks}

    def block(self, name: str) -> BlockPlan:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"The plan has no MoE block named {name!r}; it has {[b.name for b in self.blocks]}.")

    def summary(self) -> dict[str, Any]:
        """The compact metadata written into config.json under `moe_pruning`."""
        return {
            "method": self.method,
            "ratio": self.ratio,
            "base_model": self.base_model,
            "original_num_experts": {b.name: b.num_experts for b in self.blocks},
            "kept_experts": {b.name: b.kept for b in self.blocks},
            **({"unit": self.unit, "expert_widths": self.expert_widths} if self.expert_widths else {}),
            "plan_file": PLAN_FILE,
            "library": "hf_moe_prune",
            "version": self.versions.get("hf_moe_prune"),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunePlan:
        data = dict(data)
        data["blocks"] = [BlockPlan(**b) for b in data["blocks"]]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON; `path` is a file or a folder (then `moe_pruning_plan.json` inside it)."""
        if os.path.isdir(path):
            path = os.path.join(path, PLAN_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePlan:
        if os.path.isdir(path):
            path = os.path.join(path, PLAN_FILE)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
