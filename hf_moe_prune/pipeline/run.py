"""Run a prepared job on a model in memory: observe → score → allocate → compensate → reshape."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from hf_moe_prune.calibration import LayerStats, collect_stats
from hf_moe_prune.calibration.distributed import broadcast_plan
from hf_moe_prune.calibration.recorders import BlockInputRecorder, TeacherHook
from hf_moe_prune.calibration.teacher import NotALanguageModel, record_teacher
from hf_moe_prune.healing import heal
from hf_moe_prune.pipeline import auto
from hf_moe_prune.pipeline.apply import apply
from hf_moe_prune.pipeline.decide import decide, statistics_needed
from hf_moe_prune.pipeline.job import PruneJob
from hf_moe_prune.pipeline.measure import FULL_LOAD, log_quality, measure
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS

logger = logging.getLogger(__name__)


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
    """Calibrate, score, allocate, compensate and reshape `model` in place; return the plan (recorded on the model by
    `hf_moe_prune.api`, which binds saving)."""
    config, method = job.config, job.method
    start = time.perf_counter()
    teacher, quality = record_held_out(model, job, progress)  # before anything can change the model
    wants_inputs = COMPENSATIONS.get(config.compensation).needs_inputs
    requires, _, _ = statistics_needed(job)
    searching = auto.searches(config)
    if searching:
        if teacher is None:  # before the calibration pass: the search has nothing to judge candidates on
            why = (quality or {}).get("skipped", "measurement is off")
            raise ValueError(f"auto: no held-out rows to judge candidate plans on ({why}).")
        requires = auto.required_statistics(job)
        wants_inputs = wants_inputs or any(COMPENSATIONS.get(c).needs_inputs for c in auto.compensations(job))
    recorder = None
    allocator = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    if job.rows is not None and (wants_inputs or (allocator is not None and allocator.needs_inputs)):
        recorder = BlockInputRecorder(job.blocks, len(job.rows), config.batch_size, seed=config.seed)
    # healing's teacher: the unpruned model's top-k targets on the scoring rows, read off the calibration forwards
    teacher_hook = TeacherHook(model, config.healing["top_k"]) if config.healing and job.rows is not None else None
    if job.statistics is not None:
        if teacher_hook is not None:  # healing's teacher still needs the unpruned model's forwards: no statistics
            collect_stats(model, job.blocks, frozenset(), job.rows, config.batch_size, progress, (teacher_hook,))
        stats = dict(job.statistics.blocks)
    elif job.rows is not None:
        stats = collect_stats(
            model,
            job.blocks,
            requires,
            job.rows,
            config.batch_size,
            progress=progress,
            recorders=tuple(r for r in (recorder, teacher_hook) if r is not None),
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
    result = None
    if searching:
        seconds = time.perf_counter() - start
        job, result = auto.search(model, job, stats, teacher, context, seconds, progress, inputs, fitted)
        context["config"] = job.config
        config = job.config
    if job.method.fit is None:
        fitted = None  # the search chose another method than the one that fitted
    plan = decide(job, model.config, stats, fitted, context, time.perf_counter() - start)
    plan = broadcast_plan(plan)  # under torch.distributed: rank 0's decision on every rank, before it is applied
    before = sum(p.numel() for p in model.parameters())
    apply(model, plan, stats=stats, compensation=config.compensation, inputs=inputs)
    plan.parameters = {"before": before, "after": sum(p.numel() for p in model.parameters())}
    if teacher_hook is not None:
        plan.healing = heal(
            model,
            teacher_hook.result(),
            config.healing,
            held_out=teacher,
            measure=measure,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
    if teacher is not None:
        quality = {**measure(model, teacher, config.batch_size, progress), **FULL_LOAD}
    auto.record(plan, result)
    finish(plan, job, quality)
    return plan


def record_held_out(model: torch.nn.Module, job: PruneJob, progress: bool = True):
    """The unpruned model's targets on the job's held-out rows (no grad), or None with the quality block saying why
    (None too when measurement is off)."""
    if job.eval_rows is None:
        return None, {"skipped": job.eval_skipped} if job.eval_skipped else None
    try:
        return record_teacher(model, job.eval_rows, batch_size=job.config.batch_size, progress=progress), None
    except NotALanguageModel as error:
        return None, {"skipped": str(error).rstrip(".")}


def finish(plan: PrunePlan, job: PruneJob, quality: dict[str, Any] | None) -> None:
    """Record the held-out measurement (and how many rows were held out) on the plan, and log it."""
    if job.eval_rows is not None:
        plan.calibration["held_out_rows"] = len(job.eval_rows)
    plan.quality = quality
    log_quality(quality)
    warn_not_portable(plan)


def warn_not_portable(plan: PrunePlan) -> None:
    """Say, before anything is saved, which consumers will refuse this plan's checkpoint."""
    if plan.is_uniform:
        return
    why = "experts of different widths" if plan.expert_widths else "different numbers of experts per layer"
    refuse = ", ".join(name for name, loads in plan.loaders.items() if not loads)
    logger.warning(
        "This plan is not portable (%s): its checkpoint loads with transformers after `import hf_moe_prune` and with "
        "Optimum OpenVINO; %s refuse it (never silently). Pass portable=True for a plan every consumer loads.",
        why,
        refuse,
    )
