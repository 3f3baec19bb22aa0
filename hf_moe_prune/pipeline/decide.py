"""Decide: from the calibration statistics (or a method's fit) to a plan — scores, the budget's allocation, and what
each block keeps. The model is not changed."""

from __future__ import annotations

from typing import Any

import torch

from hf_moe_prune.adapters import text_config
from hf_moe_prune.allocation import allocate, select_experts
from hf_moe_prune.allocation.neurons import neuron_plan
from hf_moe_prune.calibration import LayerStats, describe
from hf_moe_prune.pipeline.job import PruneJob
from hf_moe_prune.plan import BlockPlan, PrunePlan
from hf_moe_prune.registries import NEURON_SCORES, SCHEDULE_KEYS, schedule_options
from hf_moe_prune.version import __version__


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
            kept = kept_experts(method, stats.get(block.name), scores, counts[block.name], block, method_kwargs)
            plan_blocks.append(BlockPlan(block.name, block.layer_idx, block.num_experts, kept, scores.tolist()))
    calibration = {"source": describe(config.calibration)}
    if job.statistics is not None:
        fp = job.statistics.fingerprint
        calibration = {"source": job.statistics.describe(), "rows": fp.get("rows"), "seq_len": fp.get("seq_len")}
        calibration["tokens"] = fp.get("tokens")
        calibration["statistics"] = {k: fp.get(k) for k in ("data_hash", "model", "revision", "parts") if fp.get(k)}
    elif job.rows is not None:
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


def kept_experts(
    method, stats: LayerStats | None, scores: torch.Tensor, keep: int, block, method_kwargs: dict[str, Any]
) -> list[int]:
    """The `keep` experts `block` keeps, ascending: the method's own joint choice from the block's statistics when it
    has a `select`, else the `keep` best scores (`select_experts`); expert groups keep equal counts either way."""
    if method.select is None:
        return select_experts(scores, keep, block.groups[0])
    kept = [int(e) for e in method.select(stats, keep, block.groups[0], **method_kwargs)]
    if len(kept) != keep or kept != sorted(set(kept)) or not all(0 <= e < block.num_experts for e in kept):
        raise RuntimeError(
            f"method {method.name!r} selected {kept} in {block.name}: expected {keep} distinct experts of "
            f"{block.num_experts}, ascending."
        )
    return kept


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


def _versions() -> dict[str, str]:
    import transformers

    return {"hf_moe_prune": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
