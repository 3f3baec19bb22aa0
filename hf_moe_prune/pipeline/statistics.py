"""Calibrate once, decide many times: gather every statistic into a `CalibrationStatistics`, and resolve a config's
`statistics=` (read, combine, check against the model) when a job is prepared."""

from __future__ import annotations

import logging
from typing import Any

import torch

from hf_moe_prune.adapters import text_config
from hf_moe_prune.calibration import collect_stats, describe
from hf_moe_prune.calibration.artifact import (
    CalibrationStatistics,
    combine,
    read_statistics,
    router_checksum,
    rows_hash,
)
from hf_moe_prune.calibration.vocabulary import NEURON_STATISTICS, STATISTICS
from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS
from hf_moe_prune.version import __version__

logger = logging.getLogger(__name__)


def available_statistics(blocks) -> frozenset[str]:
    """Every statistic the observers can collect on all of `blocks` (neuron statistics need a described layout)."""
    from hf_moe_prune.reshape.neuron_layout import neuron_layout

    names = set(STATISTICS)
    for block in blocks:
        routing = block.adapter.routing
        if routing == "dense_scaled_input":
            names -= {"direction_sum", *NEURON_STATISTICS}
        elif routing == "sorted_dispatch":
            names -= NEURON_STATISTICS
        elif names & NEURON_STATISTICS:
            try:
                neuron_layout(block.experts)
            except (ValueError, AttributeError, NotImplementedError):
                names -= NEURON_STATISTICS
    return frozenset(names)


def _width(block) -> int | None:
    from hf_moe_prune.reshape.neuron_layout import neuron_layout

    try:
        return neuron_layout(block.experts).width
    except (ValueError, AttributeError, NotImplementedError):
        return None


def routing_facts(blocks) -> dict[str, dict[str, Any]]:
    """What the statistics are about, per block: layer, expert count, top-k, width and a router checksum."""
    return {
        b.name: {
            "layer_idx": b.layer_idx,
            "num_experts": b.num_experts,
            "top_k": b.top_k,
            "width": _width(b),
            "router": router_checksum(b),
        }
        for b in blocks
    }


def fingerprint(model, config, rows: torch.Tensor, eval_rows: torch.Tensor | None, names) -> dict[str, Any]:
    """Where the statistics come from: the model, the data (hash, size), the library versions."""
    import transformers

    model_config = model.config if hasattr(model, "config") else None
    return {
        "model": getattr(model_config, "name_or_path", None) or None,
        "revision": getattr(model_config, "_commit_hash", None),
        "model_type": text_config(model_config).model_type if model_config is not None else None,
        "source": describe(config.calibration),
        "data_hash": rows_hash(rows),
        "held_out_hash": rows_hash(eval_rows),
        "rows": int(rows.shape[0]),
        "seq_len": int(rows.shape[1]),
        "tokens": int(rows.numel()),
        "held_out_rows": 0 if eval_rows is None else int(eval_rows.shape[0]),
        "seed": config.seed,
        "statistics": sorted(names),
        "versions": {
            "hf_moe_prune": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }


def gather(model, job, progress: bool = True) -> CalibrationStatistics:
    """One calibration pass over the job's scoring rows collecting every statistic the model's experts allow."""
    if job.rows is None:
        raise ValueError("calibrate: no calibration rows; give `calibration` data in the config.")
    names = available_statistics(job.blocks)
    stats = collect_stats(model, job.blocks, names, job.rows, job.config.batch_size, progress=progress)
    facts = routing_facts(job.blocks)
    return CalibrationStatistics(
        {name: s.cpu() for name, s in stats.items()},
        facts,
        fingerprint(model, job.config, job.rows, job.eval_rows, names),
        None if job.eval_rows is None else job.eval_rows.cpu(),
    )


def refusal(config, method) -> str | None:
    """Why statistics cannot decide this request (it needs more than forward sums), or None when they can."""
    if method.fit is not None:
        return f"method {method.name!r} learns from gradients"
    if method.searches:
        return f"method {method.name!r} judges candidate plans on the running model"
    allocator = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    if allocator is not None and (allocator.reads_model or allocator.needs_inputs or allocator.searches):
        return f"allocation {config.allocation!r} re-runs the model or records block inputs"
    compensator = COMPENSATIONS.get(config.compensation)
    if compensator.needs_inputs or compensator.searches:
        return f"compensation {config.compensation!r} re-runs blocks on their calibration inputs"
    return None


def load(value, weights: dict[str, float] | None = None) -> CalibrationStatistics:
    """A `statistics` value as one `CalibrationStatistics`: an object as it is, a folder read, a dict of them
    combined with `weights` (`hf_moe_prune.calibration.artifact.combine`)."""
    if isinstance(value, CalibrationStatistics):
        return value
    if isinstance(value, dict):
        return combine({name: load(v) for name, v in value.items()}, weights)
    return read_statistics(value)


def resolve(model, config, blocks, method, requires: frozenset[str]) -> CalibrationStatistics | None:
    """The statistics `config.statistics` names, read, combined and checked against `blocks`; None when there are
    none, or when this request needs more than sums (it then calibrates, and says so)."""
    if config.statistics is None:
        return None
    why = refusal(config, method)
    if why is not None:
        if config.calibration is None:
            raise ValueError(f"statistics= cannot decide this request: {why}; give `calibration` data for it.")
        logger.warning("statistics= cannot decide this request (%s): calibrating on the calibration data.", why)
        return None
    stats = load(config.statistics, config.statistics_weights)
    stats.check(blocks, text_config(model.config).model_type, requires)
    return stats
