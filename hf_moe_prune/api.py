"""`prune(model, config)`: the one verb. Observe → score → allocate → compensate → reshape, on a model in memory."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from .adapters import MoEBlock, find_blocks, get_adapter, text_config
from .allocation import allocate, check_budget, check_removes_experts, keep_counts, select_experts
from .calibration import LayerStats, calibration_rows, collect_stats, describe
from .calibration.distributed import broadcast_plan
from .compensation import BlockInputRecorder, CompensationContext, check_compensation
from .config import MoEPruneConfig
from .methods import METHODS, ScoringMethod
from .neurons import NEURON_SCORES, SCHEDULE_KEYS, WidthGroupedExperts, narrow_experts, neuron_plan, schedule_options
from .neurons.layout import neuron_layout
from .neurons.schedule import check_schedule
from .offload import onloaded
from .plan import BlockPlan, PrunePlan
from .registries import ALLOCATIONS, COMPENSATIONS
from .reshape import check_same_count, set_expert_count, slice_block

logger = logging.getLogger(__name__)


@dataclass
class PruneJob:
    """Everything checked and prepared before calibration: blocks, method, calibration rows."""

    config: MoEPruneConfig
    blocks: list[MoEBlock]
    method: ScoringMethod
    rows: torch.Tensor | None


def _as_config(config: MoEPruneConfig | dict[str, Any]) -> MoEPruneConfig:
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


def prepare(model: torch.nn.Module, config: MoEPruneConfig, tokenizer: Any = None) -> PruneJob:
    """Validate everything that can fail before calibration and tokenize the calibration data.

    Works on a meta-device skeleton too (shapes are all it reads), so the quantizer runs it before weights load.
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
    rows = None
    if method.needs_calibration:
        if not isinstance(config.calibration, torch.Tensor):
            tokenizer = tokenizer or config.tokenizer or default_tokenizer(model)
        rows = calibration_rows(config.calibration, tokenizer, config.num_samples, config.seq_len, config.seed)
        vocab = getattr(text_config(model.config), "vocab_size", None)
        if isinstance(vocab, int) and rows.numel() and int(rows.max()) >= vocab:
            raise ValueError(
                f"Calibration token id {int(rows.max())} is outside the model's vocabulary of {vocab} tokens: the ids "
                "(or the tokenizer) belong to another model."
            )
    return PruneJob(config, blocks, method, rows)


def _warn_unseen(blocks, stats) -> None:
    """Say which blocks no calibration token reached (ERNIE-4.5-VL's vision experts under text calibration): their
    experts are ranked without evidence."""
    unseen = [b.name for b in blocks if b.name in stats and stats[b.name].tokens == 0]
    if unseen:
        logger.warning(
            "No calibration token was routed to %d MoE block(s) (%s): their experts are ranked without evidence. "
            "Calibrate with data that reaches them, or keep them whole with `ignore=` where the family allows "
            "per-layer counts.",
            len(unseen),
            ", ".join(unseen[:4]) + (", ..." if len(unseen) > 4 else ""),
        )


def run(model: torch.nn.Module, job: PruneJob, progress: bool = True) -> PrunePlan:
    """Calibrate, score, allocate, compensate and reshape `model` in place; return the plan."""
    config, method = job.config, job.method
    start = time.perf_counter()
    wants_inputs = COMPENSATIONS.get(config.compensation).needs_inputs
    requires, _, _ = statistics_needed(job)
    recorder = None
    allocator = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    if job.rows is not None and (wants_inputs or (allocator is not None and allocator.needs_inputs)):
        recorder = BlockInputRecorder(job.blocks, len(job.rows), config.batch_size, seed=config.seed)
    if job.rows is not None:
        stats = collect_stats(
            model,
            job.blocks,
            requires,
            job.rows,
            config.batch_size,
            progress=progress,
            recorders=(recorder,) if recorder is not None else (),
        )
        _warn_unseen(job.blocks, stats)
    else:
        stats = {b.name: LayerStats(b.num_experts) for b in job.blocks}
    fitted = None
    if method.fit is not None and job.rows is not None:
        with torch.enable_grad():  # gradient methods work under a caller's torch.no_grad() / inference code too
            fitted = method.fit(model, job.blocks, job.rows, config, progress=progress)
    context: dict[str, Any] = {"config": config, "model": model, "rows": job.rows, "seed": config.seed}
    inputs = None
    if recorder is not None:
        inputs, context["input_norms"] = recorder.result()
        if not wants_inputs:
            inputs = None
    plan = decide(job, model.config, stats, fitted, context, time.perf_counter() - start)
    plan = broadcast_plan(plan)  # under torch.distributed: rank 0's decision on every rank, before it is applied
    before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan, stats=stats, compensation=config.compensation, inputs=inputs)
    plan.parameters = {"before": before, "after": sum(p.numel() for p in model.parameters())}
    return plan


def statistics_needed(job: PruneJob) -> tuple[frozenset[str], dict[str, Any], dict[str, Any] | None]:
    """The statistics calibration must collect, the scoring function's own kwargs, and the neuron schedule's
    options (None for whole-expert pruning)."""
    config, method = job.config, job.method
    requires, method_kwargs, options = method.requires, dict(config.method_kwargs), None
    if config.unit == "neuron":
        options = schedule_options(config.allocation, method_kwargs)
        requires = requires | {NEURON_SCORES[options["neuron_score"]]}
    for key in SCHEDULE_KEYS:  # schedule options are not the scoring function's
        method_kwargs.pop(key, None)
    return requires, method_kwargs, options


def decide(
    job: PruneJob,
    model_config,
    stats: dict[str, LayerStats],
    fitted: dict[str, torch.Tensor] | None = None,
    context: dict[str, Any] | None = None,
    seconds: float = 0.0,
) -> PrunePlan:
    """Score every expert from the calibration statistics (or a method's fit), allocate the budget and choose what
    each block keeps; the model is not changed."""
    config, method = job.config, job.method
    _, method_kwargs, options = statistics_needed(job)
    generator = torch.Generator().manual_seed(config.seed)
    all_scores = {}
    for block in job.blocks:
        if fitted is not None:
            scores = fitted[block.name].double().cpu()
        else:
            scores = method.score(stats[block.name], generator, **method_kwargs).double().cpu()
        if scores.shape != (block.num_experts,):
            raise RuntimeError(
                f"method {method.name!r} returned scores of shape {tuple(scores.shape)} for {block.name}"
            )
        if not bool(torch.isfinite(scores).all()):
            # NaN or inf scores would rank experts arbitrarily: a degenerate plan that looks like a result
            bad = int((~torch.isfinite(scores)).sum())
            raise ValueError(
                f"method {method.name!r} gave {bad} non-finite (NaN or inf) expert scores in {block.name}: the "
                "model's weights or activations hold NaN/inf there (a damaged checkpoint, or fp16 overflow: load in "
                "bf16 or fp32). Nothing was changed."
            )
        all_scores[block.name] = scores
    schedule = None
    if options is not None:
        plan_blocks, schedule = _neuron_blocks(job.blocks, all_scores, stats, config, options)
    else:
        counts = allocate(job.blocks, all_scores, config, context)
        plan_blocks = []
        for block in job.blocks:
            scores = all_scores[block.name]
            kept = select_experts(scores, counts[block.name], block.groups[0])
            plan_blocks.append(BlockPlan(block.name, block.layer_idx, block.num_experts, kept, scores.tolist()))
    calibration = {"source": describe(config.calibration)}
    if job.rows is not None:
        calibration.update(rows=int(job.rows.shape[0]), seq_len=int(job.rows.shape[1]), tokens=int(job.rows.numel()))
    return PrunePlan(
        method=method.name,
        model_type=text_config(model_config).model_type,
        blocks=plan_blocks,
        ratio=config.ratio,
        base_model=getattr(model_config, "name_or_path", None) or None,
        calibration=calibration,
        config=config.to_dict(),
        versions=_versions(),
        stats_seconds=round(seconds, 3),
        unit=config.unit,
        neuron_schedule=schedule,
    )


def _neuron_blocks(blocks, scores, stats, config, options) -> tuple[list[BlockPlan], dict]:
    """Block plans of a neuron pruning: experts dropped, kept whole, and narrowed to their best neurons."""
    statistic = NEURON_SCORES[options["neuron_score"]]
    # Neurons compete only within their expert, so sums rank them as means would.
    neuron_scores = {block.name: stats[block.name][statistic] for block in blocks}
    decisions, schedule = neuron_plan(blocks, scores, neuron_scores, config.ratio, config.ignore, options)
    plan_blocks = []
    for block in blocks:
        decision = decisions[block.name]
        plan_blocks.append(
            BlockPlan(
                block.name,
                block.layer_idx,
                block.num_experts,
                decision.kept,
                scores[block.name].tolist(),
                neurons=decision.neurons or None,
                intermediate_size=decision.width or None,
            )
        )
    return plan_blocks, schedule


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
    config = _as_config(config)
    return run(model, prepare(model, config, tokenizer), progress=progress)


def apply_plan(
    model: torch.nn.Module,
    plan: PrunePlan,
    stats: dict[str, LayerStats] | None = None,
    compensation: str = "none",
    inputs: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Reshape `model` to the experts `plan` keeps (no calibration needed), patch its config and remember the plan.

    `compensation` runs on each block before it is sliced, with its `stats` and calibration `inputs` if given.
    """
    from .saving import attach_plan
    from .validation import check_plan

    blocks = {b.name: b for b in find_blocks(model)}
    check_plan(plan, list(blocks.values()))  # before any block is touched: a bad plan leaves the model as it was
    compensate = COMPENSATIONS.get(compensation)
    for block_plan in plan.blocks:
        block = blocks[block_plan.name]
        context = CompensationContext(
            stats=None if stats is None else stats.get(block.name),
            inputs=None if inputs is None else inputs.get(block.name),
        )
        with onloaded(model, block.module) as offloaded:  # accelerate-offloaded weights: sliced in its store
            if offloaded and block_plan.neurons:
                raise ValueError(
                    f"{block.name} is offloaded (device_map); neuron pruning rebuilds its experts module, which the "
                    "offload hooks cannot follow. Load it on one device or prune with streaming=True."
                )
            if not (block.fixed_routing and block_plan.num_kept == block.num_experts):
                # a hash-routed block keeps every expert, and re-running it alone would lack the input ids it routes by
                compensate(block, block_plan.kept, context)
            slice_block(block, block_plan.kept)
            if block_plan.neurons:
                narrow_experts(block, block_plan.kept, block_plan.neurons)
    counts = {b.num_kept for b in plan.blocks}
    adapter = get_adapter(model)
    set_expert_count(model, adapter, max(counts))
    attach_plan(model, plan)
    return model


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"hf_moe_prune": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
