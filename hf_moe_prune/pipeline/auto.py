"""`method="auto"` / `allocation="auto"`: one calibration pass, candidate plans judged on the held-out rows.

The candidates are read from the registries, never named: every expert-unit method that scores from forward
statistics alone (no gradients, no search, something to score), in each form its `reduce` option offers, crossed with
every expert-count allocation that needs nothing beyond the scores (`Allocator.streams`; only those with
`fixed_counts` for families whose layers must keep equal counts). With `method="auto"` and a named allocation the
allocation stays; with a named method and `allocation="auto"` the method stays.

Each candidate's plan is decided from the one set of statistics (cheap), then judged by running the model on the
held-out rows with the dropped experts masked in the router (`hf_moe_prune.reshape.mask_experts`: the outputs of the
sliced model, without slicing or copying anything): the KL divergence from the unpruned model's recorded targets
(`hf_moe_prune.pipeline.measure`). Lowest KL wins (ties: the earlier candidate). Candidates that keep the same
experts are judged once. The search stops when `time_budget` seconds are spent (default: 3 × the calibration pass);
the first candidate is always judged. Compensation is not searched (it changes weights, which a router mask cannot
express): the configured one is applied to the winner.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from hf_moe_prune.calibration import LayerStats
from hf_moe_prune.calibration.teacher import TeacherRecords
from hf_moe_prune.calibration.vocabulary import NEURON_STATISTICS
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.methods import METHODS
from hf_moe_prune.pipeline.decide import decide
from hf_moe_prune.pipeline.job import PruneJob
from hf_moe_prune.pipeline.measure import measure
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.registries import ALLOCATIONS
from hf_moe_prune.reshape import mask_experts

BUDGET_FACTOR = 3.0  # default time budget of the search, in calibration passes


def searches(config: MoEPruneConfig) -> bool:
    """Whether `config` asks for a search (`method` or `allocation` is a searching record)."""
    allocation = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    return METHODS.get(config.method).searches or bool(allocation and allocation.searches)


def _method_forms(method) -> list[dict[str, Any]]:
    """The method's `method_kwargs` variants worth comparing: its default, and the other `reduce` if it has one."""
    forms: list[dict[str, Any]] = [{}]
    if "reduce" in method.option_names():
        import inspect

        default = inspect.signature(method.score).parameters["reduce"].default
        forms.append({"reduce": "sum" if default == "mean" else "mean"})
    return forms


def candidates(job: PruneJob) -> list[tuple[str, str, dict[str, Any]]]:
    """`(method, allocation, method_kwargs)` of every candidate, in judging order."""
    config = job.config
    if job.method.searches:
        methods = [
            m
            for m in METHODS.values()
            if not m.searches
            and m.fit is None
            and m.unit == "expert"
            and m.requires
            and not m.requires & NEURON_STATISTICS
        ]
        forms = [(m.name, kwargs) for m in methods for kwargs in _method_forms(m)]
    else:
        forms = [(job.method.name, dict(config.method_kwargs))]
    allocation = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    if allocation is not None and allocation.searches:
        same = any(b.adapter.same_count for b in job.blocks)
        allocations = [
            a.name
            for a in ALLOCATIONS.values()
            if "expert" in a.units
            and a.allocate is not None
            and a.streams
            and not a.searches
            and (a.fixed_counts or not same)
        ]
        allocations.sort(key=lambda name: not ALLOCATIONS.get(name).fixed_counts)  # the per-layer share first
    else:
        allocations = [config.allocation]
    return [(m, a, kwargs) for a in allocations for m, kwargs in forms]


def required_statistics(job: PruneJob) -> frozenset[str]:
    """The statistics every candidate method needs (one calibration pass serves them all)."""
    names = {m for m, _, _ in candidates(job)}
    return frozenset().union(*(METHODS.get(m).requires for m in names))


def candidate_job(job: PruneJob, method: str, allocation, method_kwargs: dict[str, Any]) -> PruneJob:
    """`job` with one candidate's method, allocation and options (the calibration data and rows are shared)."""
    config = MoEPruneConfig.__new__(MoEPruneConfig)
    config.__dict__.update(job.config.__dict__)
    config.method, config.allocation, config.method_kwargs = method, allocation, dict(method_kwargs)
    return dataclasses.replace(job, config=config, method=METHODS.get(method))


def search(
    model,
    job: PruneJob,
    stats: dict[str, LayerStats],
    teacher: TeacherRecords,
    context: dict[str, Any],
    calibration_seconds: float,
    progress: bool = False,
) -> tuple[PruneJob, dict[str, Any]]:
    """Judge the candidates on the held-out rows; return the winner's job and the table for the plan.

    Args:
        model (`PreTrainedModel`): The unpruned model (left unchanged: plans are applied as router masks).
        job (`PruneJob`): The prepared job asking for `auto`.
        stats (`dict[str, LayerStats]`): The statistics of the one calibration pass.
        teacher (`TeacherRecords`): The unpruned model's targets on the held-out rows.
        context (`dict`): The allocation context (config, model, scoring rows, seed).
        calibration_seconds (`float`): How long the calibration pass took (sets the default time budget).
        progress (`bool`, *optional*, defaults to `False`): Show progress bars while judging.
    """
    config = job.config
    budget = config.time_budget if config.time_budget is not None else BUDGET_FACTOR * calibration_seconds
    start = time.perf_counter()
    table, judged = [], {}
    for i, (method, allocation, kwargs) in enumerate(candidates(job)):
        row: dict[str, Any] = {"method": method, "allocation": allocation, "method_kwargs": kwargs}
        if i > 0 and time.perf_counter() - start > budget:
            table.append({**row, "skipped": "time budget spent"})
            continue
        sub = candidate_job(job, method, allocation, kwargs)
        plan = decide(sub, model.config, stats, None, dict(context, config=sub.config))
        kept = {b.name: b.kept for b in plan.blocks}
        key = tuple(tuple(k) for k in kept.values())
        if key not in judged:
            with mask_experts(job.blocks, kept):
                judged[key] = measure(model, teacher, config.batch_size, progress=progress)
        quality = judged[key]
        row.update(kl=quality["kl"], top1_agreement=quality["top1_agreement"], ppl=quality["ppl_after"])
        table.append(row)
    scored = [(r["kl"], i) for i, r in enumerate(table) if r.get("kl") is not None]
    if not scored:
        raise ValueError("auto: no candidate plan could be measured on the held-out rows (non-finite outputs).")
    best = min(scored)[1]
    chosen = table[best]
    result = {
        "requested": {"method": config.method, "allocation": config.allocation},
        "chosen": best,
        "candidates": table,
        "seconds": round(time.perf_counter() - start, 3),
        "calibration_seconds": round(calibration_seconds, 3),
        "time_budget": round(budget, 3),
    }
    return candidate_job(job, chosen["method"], chosen["allocation"], chosen["method_kwargs"]), result


def record(plan: PrunePlan, result: dict[str, Any] | None) -> None:
    """Put the search table on the plan (the plan's `config` records the request, its `method` the winner)."""
    if result is not None:
        plan.search = result
