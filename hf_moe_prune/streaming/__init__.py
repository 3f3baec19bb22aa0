"""Plan before load: prune a checkpoint layer by layer, so the full model never sits in memory.

`stream_prune(path, config)` (or `from_pretrained(path, pruning_config=MoEPruneConfig(..., streaming=True))`):

1. The model is built with empty (meta) parameters; only the weights outside the decoder layers (embeddings, final
   norm, head) are loaded, and the calibration rows are embedded.
2. The inputs every decoder layer receives besides the hidden states (attention masks, rotary embeddings, ...) are
   captured by running the model's own forward with pass-through layers, so no family-specific code builds them.
3. Layer by layer: only that layer's tensors are read from the safetensors files (through transformers' own loader,
   so checkpoint layouts and renamings are converted exactly as `from_pretrained` converts them), all calibration
   hidden states run through it with the observers attached, and its weights are released again. The next layer
   sees the unpruned layer's outputs (`propagation="dense"`, the default: the statistics then equal those of a
   full forward) or the outputs with this layer already pruned (`propagation="pruned"`, decided layer by layer;
   needs a per-layer allocation).
   The calibration rows held out to measure the result (`MoEPruneConfig.eval_fraction`) run through the same
   unpruned layer after the observers are detached (never masked, never observed); after the last layer the model's
   own final norm and LM head turn their hidden states into the unpruned model's targets
   (`hf_moe_prune.calibration.teacher`), as a full forward would.
4. The plan is decided from the statistics as after a full load, then only the kept experts' tensors are read
   (dropped experts' per-expert tensors are skipped, fused tensors and router rows are read row by row), so the
   compact model is the only model ever materialized. It then runs whole on the held-out rows, and
   `PrunePlan.quality` compares it with the targets (`mode: "streaming"`; the same numbers as after a full load, to
   float rounding).
   With `healing`, the scoring rows' last hidden states give the unpruned model's targets the same way, and the
   compact model is distilled toward them after loading (`hf_moe_prune.healing`).

Needs forward statistics only: methods with a `fit` (gradients: `compel`, `diep`), allocations that re-run the model
(`evolutionary`) or record block inputs (`outlier`), and compensation (`fisher` re-runs blocks, `merge` reads the
dropped experts) need the whole model; they are refused with that reason. Requires safetensors checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from hf_moe_prune.adapters import get_adapter
from hf_moe_prune.calibration.runner import peak_rss_kib
from hf_moe_prune.calibration.stats import LayerStats
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.reshape import check_same_count
from hf_moe_prune.streaming.checkpoint import Checkpoint, StreamingRefused, check_against_config
from hf_moe_prune.streaming.layers import calibrate, head_teacher
from hf_moe_prune.streaming.refusals import (
    PROPAGATIONS,
    check_streamable,
    pruned_checkpoint_refusal,
    streaming_refusal,
)
from hf_moe_prune.streaming.skeleton import finish_compact, open_checkpoint
from hf_moe_prune.streaming.statistics import stream_statistics

__all__ = [
    "PROPAGATIONS",
    "Checkpoint",
    "StreamingRefused",
    "check_against_config",
    "pruned_checkpoint_refusal",
    "stream_prune",
    "stream_statistics",
    "streaming_refusal",
]


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return peak_rss_kib() / 2**20


def _teacher(model, layers, job, finals, quality):
    """The unpruned model's records on the held-out rows from their last hidden states, or None and why not."""
    from hf_moe_prune.calibration.teacher import NotALanguageModel

    if finals is None:
        return None, quality
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # loading the embeddings replaced the parameter a tied LM head shares
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.device.type == "meta":
        return None, {"skipped": "the LM head's weights were not in the checkpoint's non-layer tensors"}
    try:
        return head_teacher(model, layers, job.eval_rows, finals, job.config.batch_size), None
    except NotALanguageModel as error:
        return None, {"skipped": str(error).rstrip(".")}


def stream_prune(
    path: str,
    config: MoEPruneConfig,
    tokenizer: Any = None,
    *,
    propagation: str = "dense",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    model_class: type | None = None,
    model_config=None,
    **hub_kwargs,
):
    """Prune the checkpoint at `path` without loading the full model and return the compact model, ready to save.

    Args:
        path (`str`): A local folder or Hub id of a safetensors checkpoint of a supported MoE family.
        config (`MoEPruneConfig`): What to prune; must use forward statistics only (see the module docstring).
        tokenizer (*optional*): For text calibration data; by default the checkpoint's own.
        propagation (`str`, *optional*, defaults to `"dense"`): What the next layer sees during calibration: the
            unpruned layer's outputs (`"dense"`: statistics equal a full forward's), or this layer already pruned
            (`"pruned"`).
        dtype (`torch.dtype` or `str`, *optional*): Weights' dtype; defaults to the checkpoint's.
        progress (`bool`, *optional*, defaults to `True`): Progress bars, with peak memory and time per stage.
        model_class (*optional*): The model class; defaults to `AutoModelForCausalLM`'s choice for the config.
        model_config (`PretrainedConfig`, *optional*): The checkpoint's config as the caller built it (e.g. with an
            `attn_implementation`); defaults to `AutoConfig.from_pretrained(path)`.

    Returns:
        `PreTrainedModel`: the compact model, with its plan attached (`model.moe_pruning_plan`).
    """
    from hf_moe_prune.pipeline import decide, prepare, statistics_needed
    from hf_moe_prune.pipeline.measure import STREAMING, measure
    from hf_moe_prune.pipeline.run import finish

    start = time.perf_counter()

    def make_job(model, found_tokenizer):
        job = prepare(model, config, tokenizer or found_tokenizer)
        check_streamable(config, job.method, propagation, job.blocks)
        return job

    opened = open_checkpoint(path, make_job, dtype, model_class, model_config, hub_kwargs)
    model, job, checkpoint, loader, layers, groups, folder = opened
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # loading the embeddings replaced the parameter a tied LM head shares: count it once
    params_before = sum(p.numel() for p in model.parameters())
    requires, _, _ = statistics_needed(job)
    stats = {b.name: LayerStats(b.num_experts) for b in job.blocks}
    kept_so_far: dict[str, list[int]] = {}
    teacher, quality = None, {"skipped": job.eval_skipped} if job.eval_skipped else None
    scoring_finals = None
    if job.rows is not None or job.eval_rows is not None:
        observed, finals, scoring_finals = calibrate(
            model, job, layers, groups, checkpoint, loader, requires, propagation, kept_so_far, progress
        )
        stats.update(observed)
        teacher, quality = _teacher(model, layers, job, finals, quality)
    train_teacher = None
    if scoring_finals is not None:
        # the unpruned model's targets on the scoring rows, from the same dense pass (before any layer is pruned)
        train_teacher = head_teacher(
            model, layers, job.rows, scoring_finals, config.batch_size, config.healing["top_k"]
        )
        del scoring_finals
    if job.statistics is not None:  # decided from saved sums; the pass above only carried the held-out rows
        stats.update(job.statistics.blocks)
    plan = decide(job, model.config, stats, None, {"config": config, "seed": config.seed}, time.perf_counter() - start)
    if kept_so_far:  # pruned-prefix propagation already decided every layer
        for block_plan in plan.blocks:
            block_plan.kept = kept_so_far[block_plan.name]
    check_same_count(get_adapter(model), [b.num_kept for b in plan.blocks])
    finish_compact(model, plan, layers, groups, checkpoint, loader, folder, path, progress)
    from hf_moe_prune.export.attach import attach_plan

    plan.parameters = {"before": params_before, "after": sum(p.numel() for p in model.parameters())}
    if train_teacher is not None:  # healing: the compact model distilled toward the dense pass's outputs
        from hf_moe_prune.healing import heal

        plan.healing = heal(
            model,
            train_teacher,
            config.healing,
            held_out=teacher,
            measure=measure,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
    if teacher is not None:  # the compact model, whole: measured as after a full load
        quality = {**measure(model, teacher, config.batch_size, progress), **STREAMING}
    finish(plan, job, quality)
    plan.calibration["streaming"] = {
        "propagation": propagation,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    attach_plan(model, plan)
    return model
