"""Elastic checkpoints: prune once, save one checkpoint, load it at several sizes.

```python
>>> hf_moe_prune.save_elastic(model, "elastic/", {"method": "reap", "calibration": texts}, ratios=(0.25, 0.5, 0.75))
>>> half = AutoModelForCausalLM.from_pretrained("elastic/", pruning_config=MoEPruneConfig(ratio=0.5))
>>> full = AutoModelForCausalLM.from_pretrained("elastic/")  # plain transformers: the unpruned model
```

Every size is decided from the same statistics, by forward sums only (gradient methods, searches, healing and
compensations are refused before calibrating: the checkpoint stores one set of weights). The sizes are *nested*: a
larger ratio keeps a subset of the experts a smaller one keeps, in every layer, so each size is a prefix of the
experts stored in nested order (`hf_moe_prune.export.elastic`). Ratios are decided in ascending order, each first on
its own; a plan not nested in the previous size is constrained: a layer keeps at most as many experts as there, the
best-scored among those, and what the cap takes from the budget goes back, one expert at a time, to the layer whose
best remaining candidate scores highest relative to its layer's mean. With a score ranking and a uniform allocation
this changes nothing; where it changes a size, the checkpoint records what the independent plan measured, so the
cost of nesting is on record. Each size is measured on the statistics' held-out rows with its dropped experts masked
in the unpruned model's router (`hf_moe_prune.reshape.mask_experts`): no copy of the model is made.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from hf_moe_prune.adapters import find_blocks, get_adapter
from hf_moe_prune.allocation import check_budget, check_removes_experts, keep_counts
from hf_moe_prune.calibration.artifact import CalibrationStatistics
from hf_moe_prune.calibration.teacher import NotALanguageModel, record_teacher
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.atomic import check_target, publish_folder
from hf_moe_prune.export.elastic import metadata, push_folder, storage_order, write_elastic
from hf_moe_prune.export.saving import _keep_model_type, model_sources, save_tokenizer
from hf_moe_prune.methods import METHODS
from hf_moe_prune.pipeline import decide, default_tokenizer, prepare
from hf_moe_prune.pipeline.measure import measure
from hf_moe_prune.pipeline.statistics import load, refusal
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.registries import COMPENSATIONS
from hf_moe_prune.reshape import check_same_count, mask_experts, slice_block
from hf_moe_prune.statistics import calibrate
from hf_moe_prune.streaming.refusals import _layout_reasons

__all__ = ["push_elastic", "save_elastic"]

WHAT = "the unpruned model ran whole, then again with this size's dropped experts masked in its router (to rounding)"
MASKED = {"mode": "masked", "what": WHAT}


def save_elastic(
    model: torch.nn.Module,
    output_dir: str | os.PathLike,
    config_or_statistics: MoEPruneConfig | CalibrationStatistics | str | os.PathLike | dict[str, Any],
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
    tokenizer: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_size: int | str = "5GB",
) -> dict[str, Any]:
    """Save `model` (unpruned) as one checkpoint that loads at each of `ratios` (see the module docstring).

    Args:
        model (`PreTrainedModel`): The unpruned MoE model; left as it was (its experts are permuted for the save and
            put back).
        output_dir (`str` or `os.PathLike`): The folder, written atomically (see `hf_moe_prune.save_pruned`).
        config_or_statistics: A `MoEPruneConfig` (or a dict of its fields) saying how to decide (method,
            allocation, calibration data or `statistics`; any `ratio`: each size sets its own), or statistics
            (`hf_moe_prune.calibrate`'s result, or a folder they were saved in) to decide with the default method.
            Without statistics the model is calibrated once, after every check has passed.
        ratios (`tuple[float]`, *optional*, defaults to `(0.25, 0.5, 0.75)`): Fractions of the routed experts each
            size removes.
        tokenizer (*optional*): Saved with the model; defaults to the tokenizer saved beside the model, if any.
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing model folder (never other files).
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`): Larger weights are split into shards.

    Returns:
        `dict`: the `moe_elastic` block written into config.json (sizes with experts per layer, parameters,
        held-out quality and nesting record; the stored expert order).

    Raises:
        `ValueError`: a request one set of stored weights cannot serve (gradient methods, searches, compensations,
            healing, neuron pruning, explicit counts, expert groups), ratios a model cannot keep, or an already pruned
            model; all before calibration.
    """
    config, stats = _request(config_or_statistics, ratios)
    ratios = _ratios(ratios)
    _check(model, config, ratios)
    check_target(output_dir, overwrite, model_sources(model))  # a refused folder fails before any work, too
    if stats is None:
        stats = calibrate(model, config, tokenizer, progress=progress)
    config.statistics = stats
    plans, independent = _decide(model, config, ratios)
    nesting = _measure(model, config, stats, plans, independent, progress)
    full = sum(p.numel() for p in model.parameters())
    for plan in plans:
        plan.parameters = {"before": full, "after": _parameters(model, plan)}
    order = storage_order(plans)
    meta = metadata(plans, order, nesting, full)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
    blocks = {b.name: b for b in find_blocks(model)}
    save = type(model).save_pretrained.__get__(model)  # transformers' own

    def write(tmp: Path) -> None:
        _permute(blocks, order)
        try:
            save(str(tmp), max_shard_size=max_shard_size)
        finally:
            _permute(blocks, order, back=True)
        _keep_model_type(model, tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        write_elastic(tmp, meta, plans)

    publish_folder(output_dir, write, overwrite=overwrite, sources=model_sources(model))
    return meta


def push_elastic(folder: str | os.PathLike, repo_id: str, **kwargs):
    """Publish an elastic folder written by `save_elastic` as one Hub repository, in one commit (its card names the
    repository); `from_pretrained(repo_id, pruning_config=MoEPruneConfig(ratio=r))` then loads each size.

    Args:
        folder (`str` or `os.PathLike`): The folder `save_elastic` wrote.
        repo_id (`str`): `namespace/name`; created if missing.
        kwargs: `private`, `revision`, `commit_message`, `token`.

    Returns:
        `CommitInfo`: the commit.
    """
    return push_folder(folder, repo_id, **kwargs)


def _request(value, ratios) -> tuple[MoEPruneConfig, CalibrationStatistics | None]:
    """The config to decide with (a copy) and the statistics it names (read once), or None to calibrate."""
    ratio = min(ratios) if ratios else 0.5
    if isinstance(value, dict):
        value = MoEPruneConfig(**{"ratio": ratio, **value})
    if not isinstance(value, MoEPruneConfig):
        value = MoEPruneConfig(ratio=ratio, statistics=value)  # checks the type of a statistics value
    config = _at(value, ratio)
    if config.statistics is None:
        return config, None
    return config, load(config.statistics, config.statistics_weights)


def _ratios(ratios) -> list[float]:
    values = sorted(float(r) for r in ratios)
    if not values or len(set(values)) != len(values) or not all(0 < r < 1 for r in values):
        raise ValueError(f"ratios must be distinct fractions of experts to remove, in (0, 1); got {ratios!r}.")
    return values


def _at(config: MoEPruneConfig, ratio: float) -> MoEPruneConfig:
    """A shallow copy of `config` at `ratio` (the statistics object is shared, never copied)."""
    copy = MoEPruneConfig.__new__(MoEPruneConfig)
    copy.__dict__.update({**config.__dict__, "ratio": ratio, "num_experts_to_keep": None})
    return copy


def _check(model, config: MoEPruneConfig, ratios: list[float]) -> None:
    """Refuse, before calibrating, what one set of stored weights loaded by prefixes cannot serve."""
    if getattr(model, "moe_pruning_plan", None) is not None:
        raise ValueError("save_elastic needs the unpruned model; this one is already pruned.")
    placements = set((getattr(model, "hf_device_map", None) or {}).values())
    if placements & {"cpu", "disk"} and len(placements) > 1:  # accelerate keeps offloaded weights in its own store
        raise ValueError("save_elastic permutes the experts in place: load the model without offloading (device_map).")
    blocks, why = find_blocks(model, get_adapter(model)), refusal(config, METHODS.get(config.method))
    if why is None and COMPENSATIONS.get(config.compensation).changes_weights:
        why = (
            f"compensation {config.compensation!r} changes the kept experts' weights, differently for each size, "
            "but the checkpoint stores one set of weights"
        )
    if why is None and config.healing:
        why = "healing trains the weights of one size"
    if why is None and config.unit != "expert":
        why = "sizes keep whole experts (unit='expert'); neuron pruning narrows the stored experts"
    if why is None and not isinstance(config.allocation, str):
        why = "explicit per-layer counts give every ratio the same size; name an allocation (uniform, global, ...)"
    if why is not None:
        forward = ", ".join(m.name for m in METHODS.values() if m.fit is None and not m.searches)
        raise ValueError(
            "save_elastic decides every size from one set of forward statistics and stores one set of weights: "
            f"{why}. Use a forward-statistics method ({forward}) with compensation='none'."
        )
    for grouped in [b.name for b in blocks if b.groups[0] > 1][:1]:
        raise ValueError(
            f"save_elastic: {grouped} routes within expert groups (group-limited routing); a size that keeps a "
            "prefix of the stored experts would break the groups. Prune each size with hf_moe_prune.prune instead."
        )
    layout = _layout_reasons(blocks)
    if layout or getattr(model.config, "is_encoder_decoder", False):
        reasons = "; ".join(layout or ["it is an encoder-decoder model"])
        raise ValueError(
            f"save_elastic: the sizes load layer by layer from the files, which this model forbids: {reasons}."
        )
    for at in (_at(config, ratio) for ratio in ratios):
        counts = keep_counts(blocks, at)
        check_budget(blocks, at)
        check_removes_experts(blocks, at, counts)
        check_same_count(blocks[0].adapter, counts.values(), at.allocation)


def _decide(model, config: MoEPruneConfig, ratios: list[float]) -> tuple[list[PrunePlan], list[PrunePlan | None]]:
    """One plan per ratio (ascending), nested; with the independent plan where nesting changed it (else None)."""
    plans, independent = [], []
    for ratio in ratios:
        at = _at(config, ratio)
        job = prepare(model, at)  # every check again, and the statistics checked against the model
        context = {"config": at, "model": model, "rows": None, "seed": at.seed}
        own = decide(job, model.config, dict(job.statistics.blocks), None, context)
        plan = own if not plans else _nest(own, plans[-1])
        changed = [b.kept for b in plan.blocks] != [b.kept for b in own.blocks]
        plan.calibration["elastic"] = {"ratios": ratios, "nesting_changed": changed}
        plans.append(plan)
        independent.append(own if changed else None)
    return plans, independent


def _nest(own: PrunePlan, previous: PrunePlan) -> PrunePlan:
    """`own` constrained to keep, in every layer, a subset of what `previous` keeps (see the module docstring); a
    layer whose experts already are such a subset keeps them."""
    kept, spare, scale = {}, {}, {}
    for b in own.blocks:
        pool = previous.block(b.name).kept
        ranked = sorted(pool, key=lambda e, s=b.scores: (-s[e], e))
        kept[b.name] = list(b.kept) if set(b.kept) <= set(pool) else ranked[: min(b.num_kept, len(pool))]
        spare[b.name] = [e for e in ranked if e not in kept[b.name]]
        scale[b.name] = sum(max(s, 0.0) for s in b.scores) / len(b.scores) or 1.0
    scores = {b.name: b.scores for b in own.blocks}
    for _ in range(sum(b.num_kept for b in own.blocks) - sum(len(k) for k in kept.values())):
        best = max((n for n in spare if spare[n]), key=lambda n: (scores[n][spare[n][0]] / scale[n], -len(kept[n])))
        kept[best].append(spare[best].pop(0))
    blocks = [dataclasses.replace(b, kept=sorted(kept[b.name]), neurons=None) for b in own.blocks]
    return dataclasses.replace(own, blocks=blocks, calibration=dict(own.calibration))


def _measure(model, config, stats, plans, independent, progress) -> list[dict[str, Any]]:
    """Each size's held-out quality (on the plan), and the nesting record per size."""
    blocks = find_blocks(model)
    teacher, skipped = None, None
    if stats.held_out is None or not config.eval_fraction:
        skipped = {"skipped": "the statistics hold no held-out rows (gathered with eval_fraction=0)"}
    else:
        try:
            teacher = record_teacher(model, stats.held_out, batch_size=config.batch_size, progress=progress)
        except NotALanguageModel as error:
            skipped = {"skipped": str(error).rstrip(".")}

    def quality(plan):
        if teacher is None:
            return skipped
        with mask_experts(blocks, {b.name: b.kept for b in plan.blocks}):
            return {**measure(model, teacher, config.batch_size, progress), **MASKED}

    nesting = []
    for plan, own in zip(plans, independent, strict=True):
        plan.quality = quality(plan)
        if teacher is not None:
            plan.calibration["held_out_rows"] = len(stats.held_out)
        record: dict[str, Any] = {"changed": own is not None}
        if own is not None:
            measured = quality(own) or {}
            record["independent_quality"] = {k: v for k, v in measured.items() if k not in MASKED}
            record["independent_experts_per_layer"] = own.experts_per_layer
        nesting.append(record)
    return nesting


def _parameters(model, plan: PrunePlan) -> int:
    """Parameters of the model at `plan`'s size, counted on a meta skeleton sliced to it (nothing is allocated)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        skeleton = type(model)._from_config(model.config)
    skeleton.tie_weights()  # tied embeddings count once, as in the model
    blocks = {b.name: b for b in find_blocks(skeleton)}
    for block_plan in plan.blocks:
        slice_block(blocks[block_plan.name], list(range(block_plan.num_kept)))
    return sum(p.numel() for p in skeleton.parameters())


def _permute(blocks: dict, order: dict[str, list[int]], back: bool = False) -> None:
    """Store each block's experts in `order` (original index per position), or put them `back`: router rows, expert
    tensors, biases and score-correction biases move together, so the model computes the same function."""
    for name, positions in order.items():
        slice_block(blocks[name], sorted(range(len(positions)), key=positions.__getitem__) if back else positions)
