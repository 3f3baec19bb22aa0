"""Run calibration forwards with only the observers a method needs, and always take the hooks off again."""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm
from transformers.utils.logging import is_progress_bar_enabled

from ..adapters import MoEBlock
from .observers import ExpertObserver
from .stats import LayerStats


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the device of the input embeddings (the first stage when dispatched with a device map)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and embeddings.weight.device.type != "meta":
        return embeddings.weight.device
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def collect_stats(
    model: torch.nn.Module,
    blocks: list[MoEBlock],
    requires: frozenset[str],
    rows: torch.Tensor,
    batch_size: int,
    progress: bool = True,
    recorders: tuple = (),
) -> dict[str, LayerStats]:
    """Forward `rows` through `model` in batches (no grad, eval mode) and return each block's statistics.

    Args:
        model: The model to calibrate (unchanged afterwards).
        blocks: MoE blocks to observe.
        requires: Statistics to collect (see `hf_moe_prune.methods.STATISTICS`).
        rows: `[N, seq_len]` token ids.
        batch_size: Rows per forward.
        progress: Show a tqdm progress bar.
        recorders: Further hooks (objects with `attach()`/`detach()`) that read the same forward passes.
    """
    observers = [ExpertObserver(block, requires) for block in blocks]
    device = model_device(model)
    extra = {}
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:  # the LM head is not needed for expert statistics
        extra["logits_to_keep"] = 1
    if "use_cache" in params:
        extra["use_cache"] = False
    disabled = not progress or not is_progress_bar_enabled()  # honours transformers' disable_progress_bar()
    was_training = model.training
    model.eval()
    try:
        for observer in (*observers, *recorders):
            observer.attach()
        with torch.no_grad():
            for start in tqdm(range(0, len(rows), batch_size), desc="calibration", unit="batch", disable=disabled):
                model(input_ids=rows[start : start + batch_size].to(device), **extra)
    finally:
        for observer in (*observers, *recorders):
            observer.detach()
        model.train(was_training)
    return {o.block.name: o.stats.cpu() for o in observers}
