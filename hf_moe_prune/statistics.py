"""Calibrate once, decide many times: calibration statistics as a saved artifact.

Calibration is the expensive step (a pass of the whole model over the calibration text); deciding a plan from its
statistics takes seconds. `calibrate` gathers every statistic the model's experts allow, once; `Statistics.save`
writes them (safetensors + JSON, with the routing facts and a fingerprint of the data and the model);
`MoEPruneConfig(statistics=path)` then decides any ratio, method and allocation that needs only forward sums from
them, without calibration data:

```python
>>> stats = hf_moe_prune.calibrate(model, MoEPruneConfig(ratio=0.5, calibration=texts), tokenizer=tok)
>>> stats.save("stats/")
>>> model = AutoModelForCausalLM.from_pretrained(path, pruning_config=MoEPruneConfig(ratio=0.25, statistics="stats/"))
```

Statistics of several calibration sets combine with weights (`statistics={"code": p1, "chat": p2},
statistics_weights={"code": 0.7, "chat": 0.3}`; see `hf_moe_prune.calibration.artifact.combine`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hf_moe_prune.calibration.artifact import CalibrationStatistics, read_statistics
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.atomic import publish_folder

__all__ = ["Statistics", "calibrate", "combine_statistics", "load_statistics"]


class Statistics(CalibrationStatistics):
    """Calibration statistics of one model (see `hf_moe_prune.calibration.artifact.CalibrationStatistics`), with
    `save`."""

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the statistics into the folder `path` in one step (absent or empty, or with `overwrite` a folder
        holding only earlier statistics or a model); returns the folder."""
        return publish_folder(path, self.to_files, overwrite=overwrite)

    @classmethod
    def of(cls, stats: CalibrationStatistics) -> Statistics:
        return cls(stats.blocks, stats.routing, stats.fingerprint, stats.held_out, stats.source)


def _config(config: MoEPruneConfig | dict[str, Any]) -> MoEPruneConfig:
    if isinstance(config, MoEPruneConfig):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config must be a MoEPruneConfig or a dict, got {type(config).__name__}")
    config = dict(config)
    if not any(k in config for k in ("ratio", "num_experts_to_keep")) and not isinstance(
        config.get("allocation"), (list, dict)
    ):
        config["ratio"] = 0.5  # statistics do not depend on the budget; the config insists on one
    return MoEPruneConfig(**config)


def calibrate(
    model: torch.nn.Module | str | os.PathLike,
    config: MoEPruneConfig | dict[str, Any],
    tokenizer: Any = None,
    progress: bool = True,
    **stream_kwargs,
) -> Statistics:
    """Run the calibration pass once and return every statistic the model's experts allow.

    Args:
        model (`PreTrainedModel`, `str` or `os.PathLike`): A loaded MoE model, or a checkpoint folder / Hub id, which
            is then calibrated layer by layer without loading the whole model (`hf_moe_prune.streaming`).
        config (`MoEPruneConfig` or `dict`): The calibration fields are read (`calibration`, `num_samples`,
            `seq_len`, `batch_size`, `seed`, `eval_fraction`: the held-out rows are stored, never summed); as a
            dict no budget is needed.
        tokenizer (*optional*): For text calibration data; by default the model's own.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
        stream_kwargs: For a path: `dtype`, `model_class`, Hub arguments (see `hf_moe_prune.stream_prune`).

    Returns:
        `Statistics`: save them with `.save(path)`; decide from them with `MoEPruneConfig(statistics=...)`.
    """
    from hf_moe_prune import pipeline

    config = _config(config)
    if isinstance(model, (str, os.PathLike)):
        from hf_moe_prune.streaming import stream_statistics

        return Statistics.of(
            stream_statistics(os.fspath(model), config, tokenizer, progress=progress, **stream_kwargs)
        )
    job = pipeline.calibration_job(model, config, tokenizer)
    return Statistics.of(pipeline.gather(model, job, progress=progress))


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read statistics saved by `Statistics.save` (or `hf-moe-prune calibrate --output`), a local folder.

    Raises:
        `FileNotFoundError`: no statistics there. `ValueError`: the files are not statistics of this format.
    """
    return Statistics.of(read_statistics(path))


def combine_statistics(
    parts: dict[str, Statistics | str | os.PathLike], weights: dict[str, float] | None = None
) -> Statistics:
    """Combine statistics of several calibration sets of one model, each weighted (equal weights by default; each
    set's share of the tokens gives exactly the statistics of the concatenated data)."""
    from hf_moe_prune.pipeline.statistics import load

    return Statistics.of(load(dict(parts), weights))
