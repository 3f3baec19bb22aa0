"""`PrunePlan`: the record of what was pruned, passed from deciding to reshaping and saved with the model."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hf_moe_prune.validation import FORMAT_VERSION, check_format_version, check_plan_dict  # noqa: F401

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
        if isinstance(self.neurons, dict):  # JSON object keys are strings; anything else is left to `check_plan`
            self.neurons = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in self.neurons.items()}

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
    """Per-block kept experts plus how they were chosen; JSON round-trips and replays without calibration.

    `quality` is the self-measurement on the calibration rows held out from scoring (`MoEPruneConfig.eval_fraction`,
    `hf_moe_prune.pipeline.measure`): `kl`, `top1_agreement`, `ppl_before`, `ppl_after`, `rows`, `seq_len`,
    `tokens`, `top_k`, `mode` and `what` (what was measured), or `{"skipped": reason}`; None when measurement was off
    (and in plans written before it existed).

    `search` is the table of a `method="auto"` / `allocation="auto"` search (`hf_moe_prune.pipeline.auto`): the
    request, every candidate with its held-out KL, the index of the chosen one, and the time it took; None otherwise.

    `healing` records the distillation after pruning (`MoEPruneConfig.healing`, `hf_moe_prune.healing.heal`): steps
    run, why it stopped, the options, training and held-out KL before and after; None when the model was not healed.
    `quality` then measures the healed model.
    """

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
    quality: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    healing: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def is_uniform(self) -> bool:
        """Every block keeps the same number of experts at full width, in a family whose config counts its routed
        experts (JetMoE's does not): a stock config can express the result."""
        from hf_moe_prune.adapters import ADAPTERS

        counted = self.model_type not in ADAPTERS or bool(ADAPTERS.get(self.model_type).count_keys)
        return counted and len({b.num_kept for b in self.blocks}) <= 1 and not self.expert_widths

    @property
    def loaders(self) -> dict[str, bool]:
        """Which consumers load this plan's checkpoint (`README.md`, "Portability", has the measured table): a uniform
        plan gives a stock checkpoint every one of them takes (for the families each supports); any other only this
        library (transformers with `import hf_moe_prune`) and Optimum OpenVINO."""
        stock = self.is_uniform
        return {
            "hf_moe_prune (transformers + import hf_moe_prune)": True,
            "Optimum OpenVINO": True,
            "transformers without hf_moe_prune": stock,
            "vLLM / SGLang": stock,
            "llama.cpp (GGUF)": stock,
            "Optimum ONNX Runtime": stock,
            "bitsandbytes / torchao / llm-compressor": stock,
        }

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
            **({"quality": dict(self.quality)} if self.quality else {}),
            **({"healed_steps": self.healing.get("steps")} if self.healing else {}),
            "plan_file": PLAN_FILE,
            "format_version": FORMAT_VERSION,
            "library": "hf_moe_prune",
            "version": self.versions.get("hf_moe_prune"),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunePlan:
        """Build a plan from its JSON form, checked first (`hf_moe_prune.validation.check_plan_dict`).

        Args:
            data (`dict`): The parsed JSON of a plan.

        Raises:
            `TypeError` / `ValueError`: a field has a wrong type or value; the message names it.
        """
        check_plan_dict(data, [f.name for f in fields(cls)], [f.name for f in fields(BlockPlan)])
        # Only known fields: keys a newer library version added were accepted (with a warning) by the check.
        block_fields = {f.name for f in fields(BlockPlan)}
        data = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        data["blocks"] = [BlockPlan(**{k: v for k, v in b.items() if k in block_fields}) for b in data["blocks"]]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON; `path` is a file or a folder (then `moe_pruning_plan.json` inside it)."""
        if os.path.isdir(path):
            path = os.path.join(path, PLAN_FILE)
        data = self.to_dict()
        for block in data["blocks"]:
            # NaN/inf scores (NaN weights) are not JSON and are refused on load: written as null, "no score".
            if block["scores"] is not None:
                block["scores"] = [s if s is None or math.isfinite(s) else None for s in block["scores"]]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePlan:
        """Read and check a plan; `path` is a plan file or a folder holding `moe_pruning_plan.json`.

        Args:
            path (`str` or `os.PathLike`): The plan file or its folder.

        Raises:
            `ValueError`: the file is not valid JSON or not a plan object; `TypeError` / `ValueError`: a field of it
                is wrong. Every message starts with the file.
        """
        if os.path.isdir(path):
            path = os.path.join(path, PLAN_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, nesting past the recursion limit
            raise ValueError(f"{path}: not a valid JSON plan file ({type(error).__name__}: {error}).") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object (a pruning plan), got a JSON {type(data).__name__}.")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise (TypeError if isinstance(error, TypeError) else ValueError)(f"{path}: {error}") from None
