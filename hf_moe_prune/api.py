"""The public verbs: `prune(model, config)` and `apply_plan(model, plan)`. Each runs the pipeline
(`hf_moe_prune.pipeline`) and then records the plan on the model, whose `save_pretrained` and `push_to_hub` then write
the compact weights with plan, metadata and card (`hf_moe_prune.export.saving.attach_plan`)."""

from __future__ import annotations

from typing import Any

import torch

from hf_moe_prune import pipeline
from hf_moe_prune.calibration import LayerStats
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.attach import attach_plan
from hf_moe_prune.pipeline import PruneJob, decide, default_tokenizer, prepare, statistics_needed, tokenizer_at
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.registries import DEFAULT_COMPENSATION

__all__ = [
    "PruneJob",
    "apply_plan",
    "decide",
    "default_tokenizer",
    "prepare",
    "prune",
    "run",
    "statistics_needed",
    "tokenizer_at",
]


def prune(
    model: torch.nn.Module, config: MoEPruneConfig | dict[str, Any], tokenizer: Any = None, progress: bool = True
) -> PrunePlan:
    """Prune the routed experts of `model` in place, as `config` says, and return the plan.

    Args:
        model (`PreTrainedModel`): A transformers MoE model of a supported family, with its weights loaded.
        config (`MoEPruneConfig` or `dict`): What to prune and how.
        tokenizer (*optional*): Tokenizer for text calibration data. Defaults to `config.tokenizer`, then to the
            tokenizer saved with the model; not needed when `config.calibration` is a tensor of token ids.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.

    Returns:
        `PrunePlan`: the kept experts of every MoE layer, their scores, and how they were chosen. The model is now
        compact; `model.save_pretrained(path)` writes it with the plan and metadata.

    Example:
        ```python
        >>> config = MoEPruneConfig(method="reap", ratio=0.5, calibration=texts)
        >>> plan = hf_moe_prune.prune(model, config, tokenizer=tok)
        ```
    """
    plan = pipeline.run(model, pipeline.prepare(model, pipeline.as_config(config), tokenizer), progress=progress)
    attach_plan(model, plan)
    return plan


def run(model: torch.nn.Module, job: PruneJob, progress: bool = True) -> PrunePlan:
    """Run a job made by `prepare` (calibrate, decide, reshape) and record the plan on the model."""
    plan = pipeline.run(model, job, progress=progress)
    attach_plan(model, plan)
    return plan


def apply_plan(
    model: torch.nn.Module,
    plan: PrunePlan,
    stats: dict[str, LayerStats] | None = None,
    compensation: str = DEFAULT_COMPENSATION,
    inputs: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Reshape `model` to the experts `plan` keeps (no calibration needed), patch its config and record the plan, so
    that `model.save_pretrained` writes the compact checkpoint with it.

    Args:
        model (`PreTrainedModel`): The unpruned model the plan was made for.
        plan (`PrunePlan`): What to keep, e.g. `PrunePlan.load("moe_pruning_plan.json")`; checked against the model
            before any block is touched.
        stats (`dict[str, LayerStats]`, *optional*): Calibration statistics per block, for compensations that read
            them.
        compensation (`str`, *optional*, defaults to `"none"`): Run on each block before it is sliced.
        inputs (`dict[str, torch.Tensor]`, *optional*): Calibration inputs per block, for compensations that need
            them.

    Returns:
        The same model, now compact.
    """
    pipeline.apply(model, plan, stats=stats, compensation=compensation, inputs=inputs)
    attach_plan(model, plan)
    return model
