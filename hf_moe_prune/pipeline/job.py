"""Prepare: everything that can fail is checked, and the calibration data tokenized, before the expensive part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hf_moe_prune.adapters import MoEBlock, find_blocks, get_adapter, text_config
from hf_moe_prune.allocation import check_budget, check_removes_experts, keep_counts
from hf_moe_prune.allocation.neurons import check_schedule
from hf_moe_prune.calibration import calibration_rows
from hf_moe_prune.calibration.artifact import CalibrationStatistics
from hf_moe_prune.calibration.distributed import is_distributed
from hf_moe_prune.compensation import check_compensation
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.healing.offload import LORA_OFFLOADED, check_store, offloaded_hooks, will_offload
from hf_moe_prune.healing.params import trainable_modules
from hf_moe_prune.methods import METHODS, ScoringMethod
from hf_moe_prune.pipeline import statistics as saved
from hf_moe_prune.pipeline.measure import hold_out
from hf_moe_prune.registries import COMPENSATIONS, NEURON_SCORES, schedule_options
from hf_moe_prune.reshape import WidthGroupedExperts, check_same_count, neuron_layout


@dataclass
class PruneJob:
    """Everything checked and prepared before calibration: blocks, method, calibration rows.

    `rows` are the scoring rows: the observers, a method's `fit` and the allocations see these only. `eval_rows` are
    the calibration rows held out to measure the result (`MoEPruneConfig.eval_fraction`), or None, with
    `eval_skipped` saying why when measurement was asked for. `statistics` are the saved statistics the plan is
    decided from (`MoEPruneConfig.statistics`) instead of calibrating on `rows`; the held-out rows are then theirs.
    """

    config: MoEPruneConfig
    blocks: list[MoEBlock]
    method: ScoringMethod
    rows: torch.Tensor | None
    eval_rows: torch.Tensor | None = None
    eval_skipped: str | None = None
    statistics: CalibrationStatistics | None = None


def as_config(config: MoEPruneConfig | dict[str, Any]) -> MoEPruneConfig:
    if isinstance(config, MoEPruneConfig):
        return config
    if isinstance(config, dict):
        return MoEPruneConfig(**config)
    raise TypeError(f"config must be a MoEPruneConfig or a dict, got {type(config).__name__}")


def default_tokenizer(model: torch.nn.Module):
    """The tokenizer saved beside the model's checkpoint, if the model came from a path or Hub id that has one."""
    path = getattr(getattr(model, "config", None), "name_or_path", None)
    return tokenizer_at(path) if path else None


def tokenizer_at(path: str):
    """The tokenizer saved in the folder or Hub repo `path`, or None when it holds no tokenizer files."""
    from transformers import AutoTokenizer
    from transformers.utils import cached_file

    # Without tokenizer files transformers 5 builds an empty tokenizer that encodes everything to nothing.
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"):
        try:
            if cached_file(path, name, _raise_exceptions_for_missing_entries=False):
                return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            return None
    return None


def prepare(model: torch.nn.Module, config: MoEPruneConfig, tokenizer: Any = None, device_map: Any = None) -> PruneJob:
    """Validate everything that can fail before calibration and tokenize the calibration data.

    Works on a meta-device skeleton too (shapes are all it reads), so the quantizer runs it before weights load; it
    passes `from_pretrained`'s `device_map`, which says what accelerate will offload before its hooks exist.
    """
    blocks = find_blocks(model, get_adapter(model))
    if any(isinstance(b.experts, WidthGroupedExperts) for b in blocks):
        raise ValueError(
            "This model's experts are already neuron-pruned; pruning it again is not supported. Prune the original "
            "model once, combining units with method_kwargs={'drop_experts': ...} if you want both."
        )
    if config.unit == "neuron":
        for block in blocks:
            neuron_layout(block.experts)  # raises for families whose fused expert layout is not described
        check_schedule(blocks, config.ratio, config.ignore, schedule_options(config.allocation, config.method_kwargs))
    else:
        counts = keep_counts(blocks, config)  # raises before calibration when a layer's count is infeasible
        check_budget(blocks, config)
        check_removes_experts(blocks, config, counts)
        check_same_count(blocks[0].adapter, counts.values(), config.allocation)
    if config.portable and not blocks[0].adapter.count_keys:
        raise ValueError(
            f"portable=True: a {blocks[0].adapter.model_type} config has no routed-expert count, so no pruned "
            "checkpoint of this family loads in stock transformers; use portable=False."
        )
    check_compensation(config.compensation, blocks)
    if COMPENSATIONS.get(config.compensation).needs_inputs and not all(b.adapter.standalone for b in blocks):
        raise ValueError(
            f"compensation={config.compensation!r} re-runs each MoE block on its own, but a "
            f"{blocks[0].adapter.model_type} block is a whole decoder layer: use compensation='none' or 'merge'."
        )
    method = METHODS.get(config.method)
    if method.fit is not None and torch.is_inference_mode_enabled():
        raise ValueError(
            f"method {method.name!r} learns from gradients, which torch.inference_mode() forbids: call prune outside "
            "that context (torch.no_grad() is fine), or use a forward-statistics method (reap, ean, frequency, ...)."
        )
    if config.healing:
        _check_healing(model, config, device_map)
    requires = method.requires
    if config.unit == "neuron":
        requires = requires | {
            NEURON_SCORES[schedule_options(config.allocation, config.method_kwargs)["neuron_score"]]
        }
    statistics = saved.resolve(model, config, blocks, method, requires)
    if statistics is not None and not config.healing:  # decided from sums: no calibration data read at all
        eval_rows = statistics.held_out if config.eval_fraction else None
        skipped = None
        if config.eval_fraction and eval_rows is None:
            skipped = "the statistics hold no held-out rows (they were gathered with eval_fraction=0)"
        return PruneJob(config, blocks, method, None, eval_rows, skipped, statistics)
    rows = eval_rows = skipped = None
    if method.needs_calibration or config.healing:  # healing distils on the calibration rows
        rows = _rows(model, config, tokenizer)
    elif config.eval_fraction and config.calibration is not None:
        # a method that reads no calibration data (random) is still measured, when data to measure it on is given
        try:
            rows = _rows(model, config, tokenizer)
        except (ValueError, TypeError, OSError) as error:
            skipped = f"the calibration data could not be read ({error})"
    if rows is not None:
        rows, eval_rows, skipped = hold_out(rows, config.eval_fraction)
        if not (method.needs_calibration or config.healing):
            rows = None  # tokenized for the held-out rows only
    elif config.eval_fraction and skipped is None:
        skipped = "no calibration data to hold rows out of"
    return PruneJob(config, blocks, method, rows, eval_rows, skipped, statistics)


def calibration_job(model: torch.nn.Module, config: MoEPruneConfig, tokenizer: Any = None) -> PruneJob:
    """A job for gathering statistics (`hf_moe_prune.calibrate`): the blocks and the calibration rows, split into
    scoring and held-out rows exactly as `prepare` splits them, whatever the method (the budget is not checked)."""
    blocks = find_blocks(model, get_adapter(model))
    if config.calibration is None:
        raise ValueError("calibrate needs calibration data: MoEPruneConfig(calibration=texts, ...).")
    rows, eval_rows, skipped = hold_out(_rows(model, config, tokenizer), config.eval_fraction)
    return PruneJob(config, blocks, METHODS.get(config.method), rows, eval_rows, skipped)


def _check_healing(model: torch.nn.Module, config: MoEPruneConfig, device_map: Any = None) -> None:
    """Healing trains the pruned model in place: refuse what it cannot do, before calibration."""
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "healing trains the pruned model, which torch.inference_mode() forbids: call prune outside it."
        )
    if config.calibration is None:
        raise ValueError("healing distils on the calibration rows: give `calibration` data.")
    if is_distributed():
        raise NotImplementedError(
            "healing under torch.distributed is not supported yet: run the prune in one process."
        )
    if config.healing.get("lora"):
        from hf_moe_prune.healing.lora import check_lora

        check_lora(model, config.healing)  # targets and dropout, from the module structure alone
    if offloaded_hooks(model, [model]) or will_offload(device_map):
        if config.healing.get("lora"):
            raise ValueError(LORA_OFFLOADED)
        check_store(model, trainable_modules(model, config.healing["train"]))


def _rows(model: torch.nn.Module, config: MoEPruneConfig, tokenizer: Any) -> torch.Tensor:
    if not isinstance(config.calibration, torch.Tensor):
        tokenizer = tokenizer or config.tokenizer or default_tokenizer(model)
    rows = calibration_rows(config.calibration, tokenizer, config.num_samples, config.seq_len, config.seed)
    vocab = getattr(text_config(model.config), "vocab_size", None)
    if isinstance(vocab, int) and rows.numel() and int(rows.max()) >= vocab:
        raise ValueError(
            f"Calibration token id {int(rows.max())} is outside the model's vocabulary of {vocab} tokens: the ids "
            "(or the tokenizer) belong to another model."
        )
    return rows
