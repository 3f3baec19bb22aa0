"""`stream_statistics`: `hf_moe_prune.calibrate` on a checkpoint path, one decoder layer in memory at a time."""

from __future__ import annotations

from typing import Any

import torch

from hf_moe_prune.calibration.artifact import CalibrationStatistics
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.streaming.checkpoint import StreamingRefused
from hf_moe_prune.streaming.layers import calibrate
from hf_moe_prune.streaming.refusals import layout_refusal
from hf_moe_prune.streaming.skeleton import open_checkpoint


def stream_statistics(
    path: str,
    config: MoEPruneConfig,
    tokenizer: Any = None,
    *,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    model_class: type | None = None,
    model_config=None,
    **hub_kwargs,
):
    """Gather every statistic of the checkpoint at `path` layer by layer (`hf_moe_prune.calibrate` on a path): one
    decoder layer in memory at a time, as `stream_prune` calibrates; the held-out rows are stored, not run.

    Returns:
        `CalibrationStatistics`, with the same sums as a full-load `calibrate` (to float rounding).
    """
    from hf_moe_prune.pipeline import calibration_job
    from hf_moe_prune.pipeline.statistics import available_statistics, fingerprint, routing_facts

    def make_job(model, found_tokenizer):
        job = calibration_job(model, config, tokenizer or found_tokenizer)
        refusal = layout_refusal(job.blocks)
        if refusal is not None:
            raise StreamingRefused(refusal)
        return job

    model, job, checkpoint, loader, layers, groups, _ = open_checkpoint(
        path, make_job, dtype, model_class, model_config, hub_kwargs
    )
    held_out, job.eval_rows = job.eval_rows, None  # stored for later measurements, not run now
    names = available_statistics(job.blocks)
    stats, _, _ = calibrate(model, job, layers, groups, checkpoint, loader, names, "dense", {}, progress)
    facts = routing_facts(job.blocks)  # routers are not loaded on the skeleton: no checksum while streaming
    return CalibrationStatistics(stats, facts, fingerprint(model, config, job.rows, held_out, names), held_out)
