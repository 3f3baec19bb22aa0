"""Loading one size of an elastic checkpoint (`hf_moe_prune.export.elastic`) with only that size's experts in memory.

`from_pretrained(elastic, pruning_config=MoEPruneConfig(ratio=r))` comes here (`hf_moe_prune.integration.loading`):
the size is chosen from config.json before any weight is read or downloaded; the model is built on the meta device,
the weights outside the decoder layers are loaded, and then, layer by layer, only the rows of the experts the size
keeps are read from the safetensors files (`load_compact`: a per-expert tensor of a dropped expert is never opened,
a fused `[E, ...]` tensor is read row by row). Nothing is calibrated: the size's plan was decided when the checkpoint
was saved.

The kept rows are read in ascending *original* expert order (not in stored order), so the loaded model holds its
experts in the order a direct prune of the unpruned model keeps them: the two are bit-identical. The size's plan
(original indices) is attached, so `save_pretrained` writes an ordinary pruned checkpoint.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import torch

from hf_moe_prune.adapters import find_blocks, get_adapter
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.attach import attach_plan
from hf_moe_prune.export.elastic import ELASTIC_KEY, choose_size, elastic_block, read_plan, storage_plan
from hf_moe_prune.export.portable import read_config_dict
from hf_moe_prune.pipeline.checks import check_plan
from hf_moe_prune.streaming.skeleton import finish_compact, open_checkpoint

logger = logging.getLogger(__name__)


def load_size(
    path: str,
    config: MoEPruneConfig,
    tokenizer: Any = None,
    *,
    propagation: str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    model_class: type | None = None,
    model_config=None,
    **hub_kwargs,
):
    """Load the size `config.ratio` of the elastic checkpoint at `path` (a folder or Hub id).

    Takes `stream_prune`'s arguments, so that `from_pretrained` calls either the same way; `tokenizer` and
    `propagation` are not used (nothing is calibrated).

    Returns:
        `PreTrainedModel`: the model of that size, with its plan attached (`model.moe_pruning_plan`).

    Raises:
        `ValueError`: `path` is no elastic checkpoint, or has no size of that ratio (the message lists the sizes).
    """

    block = elastic_block(read_config_dict(path, hub_kwargs))
    if block is None:
        raise ValueError(f"{path} is not an elastic checkpoint (its config.json has no {ELASTIC_KEY} block).")
    index = choose_size(block, config.ratio, path)  # before anything is downloaded or read
    if config.calibration is not None or config.statistics is not None:
        logger.warning(
            "%s is an elastic checkpoint: loading its stored size ratio=%s (decided with %s), without calibrating; "
            "the calibration data or statistics given are not used.",
            path,
            config.ratio,
            block.get("method"),
        )

    def make_job(model, _tokenizer):
        return SimpleNamespace(blocks=find_blocks(model, get_adapter(model)))

    model, job, checkpoint, loader, layers, groups, folder = open_checkpoint(
        path, make_job, dtype, model_class, model_config, hub_kwargs
    )
    plan = read_plan(folder, index)
    check_plan(plan, job.blocks)  # a plan that does not fit these blocks fails before any expert is read
    finish_compact(model, storage_plan(plan, block), layers, groups, checkpoint, loader, folder, path, progress)
    # This model is one size, no longer the elastic checkpoint: a save must not claim the other sizes.
    model.config.__dict__.pop(ELASTIC_KEY, None)
    attach_plan(model, plan)
    return model
