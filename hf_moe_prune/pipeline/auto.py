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
the first candidate is always judged.

Compensation changes weights, which a router mask cannot express. With `compensation="auto"` (the default of
`method="auto"`) the `COMPENSATED` best distinct plans are judged again with each compensation that can be undone
(`Compensator.touches`, e.g. `fisher`, which changes only the kept experts' `down_proj`): the compensation runs on
the unsliced blocks exactly as `apply` runs it, the plan is judged under the router mask, and the touched rows are
put back from a copy of them (for `fisher`, about a third of the kept experts' weights; nothing else is copied).
The masked plans get the first `MASKED_SHARE` of the time budget when compensations are searched, so that they
leave time for this; the first compensated candidate is always judged, the next only if the time the last one took
still fits in the budget. Compensations that cannot run on the
model's blocks (their `check`, a block that is a whole decoder layer) or that cannot be undone (`merge`) are left
out; a name given in `compensation` is applied to the winner unjudged.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from hf_moe_prune.calibration import LayerStats
from hf_moe_prune.calibration.teacher import TeacherRecords
from hf_moe_prune.calibration.vocabulary import NEURON_STATISTICS
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.methods import METHODS
from hf_moe_prune.pipeline.apply import compensate_block
from hf_moe_prune.pipeline.decide import decide
from hf_moe_prune.pipeline.job import PruneJob
from hf_moe_prune.pipeline.measure import measure
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS
from hf_moe_prune.reshape import mask_experts, onloaded

BUDGET_FACTOR = 3.0  # default time budget of the search, in calibration passes
COMPENSATED = 2  # how many of the best masked plans are judged again with each compensation
MASKED_SHARE = 0.6  # share of the time budget the masked plans may use when compensations are searched too


def searches(config: MoEPruneConfig) -> bool:
    """Whether `config` asks for a search (`method`, `allocation` or `compensation` is a searching record)."""
    allocation = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    return (
        METHODS.get(config.method).searches
        or bool(allocation and allocation.searches)
        or COMPENSATIONS.get(config.compensation).searches
    )


def compensations(job: PruneJob) -> list[str]:
    """The compensations `compensation="auto"` judges (besides `none`): those that change weights, can be undone
    (`touches`), serve whole experts and run on every block of the model; empty when a compensation is named."""
    if not COMPENSATIONS.get(job.config.compensation).searches:
        return []
    names = []
    for record in COMPENSATIONS.values():
        if record.searches or not record.changes_weights or not record.touches or "expert" not in record.units:
            continue
        if record.needs_inputs and not all(b.adapter.standalone for b in job.blocks):
            continue
        try:
            for block in job.blocks if record.check is not None else ():
                record.check(block)
        except ValueError:
            continue
        names.append(record.name)
    return names


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
            and (a.fixed_counts or not (same or config.portable))  # equal counts where they must be
        ]
        allocations.sort(key=lambda name: not ALLOCATIONS.get(name).fixed_counts)  # the per-layer share first
    else:
        allocations = [config.allocation]
    return [(m, a, kwargs) for a in allocations for m, kwargs in forms]


def required_statistics(job: PruneJob) -> frozenset[str]:
    """The statistics every candidate method needs (one calibration pass serves them all)."""
    names = {m for m, _, _ in candidates(job)}
    return frozenset().union(*(METHODS.get(m).requires for m in names))


def candidate_job(
    job: PruneJob, method: str, allocation, method_kwargs: dict[str, Any], compensation: str | None = None
) -> PruneJob:
    """`job` with one candidate's method, allocation, options and compensation (the calibration data and rows are
    shared)."""
    config = MoEPruneConfig.__new__(MoEPruneConfig)
    config.__dict__.update(job.config.__dict__)
    config.method, config.allocation, config.method_kwargs = method, allocation, dict(method_kwargs)
    if compensation is not None:
        config.compensation = compensation
    return dataclasses.replace(job, config=config, method=METHODS.get(method))


def _compensated(model, job: PruneJob, kept, compensation: str, stats, inputs, teacher, progress) -> dict[str, Any]:
    """Judge plan `kept` with `compensation` applied to the unsliced blocks, then put the touched rows back."""
    record = COMPENSATIONS.get(compensation)
    saved = []
    try:
        for block in job.blocks:
            index = torch.as_tensor(kept[block.name], dtype=torch.long)
            for name in record.touches:
                tensor = getattr(block.experts, name)
                saved.append((tensor, index, tensor.detach()[index.to(tensor.device)].clone()))
            compensate_block(block, kept[block.name], compensation, stats, inputs)
        with mask_experts(job.blocks, kept):
            return measure(model, teacher, job.config.batch_size, progress=progress)
    finally:
        with torch.no_grad():
            for tensor, index, rows in saved:
                tensor.index_copy_(0, index.to(tensor.device), rows)


def _offloaded(model, blocks) -> bool:
    """Whether accelerate keeps some block's weights elsewhere (compensating them in place is `apply`'s business)."""
    for block in blocks:
        with onloaded(model, block.module) as offloaded:
            if offloaded:
                return True
    return False


def search(
    model,
    job: PruneJob,
    stats: dict[str, LayerStats],
    teacher: TeacherRecords,
    context: dict[str, Any],
    calibration_seconds: float,
    progress: bool = False,
    inputs: dict[str, torch.Tensor] | None = None,
    fitted: dict[str, torch.Tensor] | None = None,
) -> tuple[PruneJob, dict[str, Any]]:
    """Judge the candidates on the held-out rows; return the winner's job and the table for the plan.

    Args:
        model (`PreTrainedModel`): The unpruned model (left unchanged: plans are applied as router masks, and
            compensated weights are put back).
        job (`PruneJob`): The prepared job asking for `auto`.
        stats (`dict[str, LayerStats]`): The statistics of the one calibration pass.
        teacher (`TeacherRecords`): The unpruned model's targets on the held-out rows.
        context (`dict`): The allocation context (config, model, scoring rows, seed).
        calibration_seconds (`float`): How long the calibration pass took (sets the default time budget).
        progress (`bool`, *optional*, defaults to `False`): Show progress bars while judging.
        inputs (`dict[str, torch.Tensor]`, *optional*): Each block's sampled calibration inputs, for compensations
            that need them.
        fitted (`dict[str, torch.Tensor]`, *optional*): The scores the requested method fitted (`compel`, `diep`),
            when only the compensation is searched.
    """
    config = job.config
    budget = config.time_budget if config.time_budget is not None else BUDGET_FACTOR * calibration_seconds
    comp_names = compensations(job)
    if comp_names and _offloaded(model, job.blocks):
        comp_names = []
    searching_comp = COMPENSATIONS.get(config.compensation).searches
    masked_budget = budget * MASKED_SHARE if comp_names else budget
    start = time.perf_counter()
    table, judged, plans = [], {}, {}
    for i, (method, allocation, kwargs) in enumerate(candidates(job)):
        row: dict[str, Any] = {"method": method, "allocation": allocation, "method_kwargs": kwargs}
        if searching_comp:
            row["compensation"] = "none"
        if i > 0 and time.perf_counter() - start > masked_budget:
            table.append({**row, "skipped": "time budget spent"})
            continue
        sub = candidate_job(job, method, allocation, kwargs)
        own = fitted if method == job.method.name else None
        plan = decide(sub, model.config, stats, own, dict(context, config=sub.config))
        kept = {b.name: b.kept for b in plan.blocks}
        key = tuple(tuple(k) for k in kept.values())
        if key not in judged:
            with mask_experts(job.blocks, kept):
                judged[key] = measure(model, teacher, config.batch_size, progress=progress)
            plans[key] = (len(table), kept)
        quality = judged[key]
        row.update(kl=quality["kl"], top1_agreement=quality["top1_agreement"], ppl=quality["ppl_after"])
        table.append(row)
    best_plans = sorted((judged[key]["kl"], plans[key][0], key) for key in plans if judged[key]["kl"] is not None)
    last = None  # how long the last compensated judgment took: the next one is started only if it fits
    for _, index, key in best_plans[:COMPENSATED]:
        for name in comp_names:
            row = {**{k: table[index][k] for k in ("method", "allocation", "method_kwargs")}, "compensation": name}
            if last is not None and time.perf_counter() - start + last > budget:
                table.append({**row, "skipped": "time budget spent"})
                continue
            began = time.perf_counter()
            quality = _compensated(model, job, plans[key][1], name, stats, inputs, teacher, progress)
            last = time.perf_counter() - began
            row.update(kl=quality["kl"], top1_agreement=quality["top1_agreement"], ppl=quality["ppl_after"])
            table.append(row)
    scored = [(r["kl"], i) for i, r in enumerate(table) if r.get("kl") is not None]
    if not scored:
        raise ValueError("auto: no candidate plan could be measured on the held-out rows (non-finite outputs).")
    best = min(scored)[1]
    chosen = table[best]
    requested = {"method": config.method, "allocation": config.allocation}
    if searching_comp:
        requested["compensation"] = config.compensation
    result = {
        "requested": requested,
        "chosen": best,
        "candidates": table,
        "seconds": round(time.perf_counter() - start, 3),
        "calibration_seconds": round(calibration_seconds, 3),
        "time_budget": round(budget, 3),
    }
    winner = candidate_job(
        job, chosen["method"], chosen["allocation"], chosen["method_kwargs"], chosen.get("compensation")
    )
    return winner, result


def record(plan: PrunePlan, result: dict[str, Any] | None) -> None:
    """Put the search table on the plan (the plan's `config` records the request, its `method` the winner)."""
    if result is not None:
        plan.search = result
