"""Run calibration forwards with only the observers a method needs, and always take the hooks off again."""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm
from transformers.utils.logging import is_progress_bar_enabled

from hf_moe_prune.adapters import MoEBlock
from hf_moe_prune.calibration.distributed import BatchSums, check_recorders, is_main_process, local_batches
from hf_moe_prune.calibration.observers import ExpertObserver
from hf_moe_prune.calibration.stats import LayerStats


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the device of the input embeddings (the first stage when dispatched with a device map)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and embeddings.weight.device.type != "meta":
        return embeddings.weight.device
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def model_inputs(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keyword inputs of one forward over token rows `ids`.

    Decoder-only models read the rows as `input_ids`. Encoder-decoder models (Switch Transformers) read them in the
    encoder and, teacher-forced, in the decoder (the rows shifted right behind the decoder start token, as for
    `labels=ids`), so the experts of both stacks see the text and logit position t predicts token t.
    """
    inputs = {"input_ids": ids}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=ids)
    return inputs


def peak_rss_kib() -> int:
    """The process's peak resident memory in KiB: Linux's `VmHWM` (reset when a program starts; `ru_maxrss` keeps the
    peak of the process it was forked from), else `ru_maxrss`."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory(device: torch.device | None = None) -> dict[str, str]:
    """Peak memory so far, for progress bars: the process's resident memory, and the accelerator's if one is used."""
    out = {"peak_rss": f"{peak_rss_kib() / 2**20:.2f}GB"}
    if device is not None and device.type == "cuda":
        out["peak_gpu"] = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}GB"
    return out


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

    Under an initialized `torch.distributed` process group of several processes, every rank must call this with the
    same `rows`: each runs only its share of the batches and all return the statistics of all of them, bit-identical
    to a single-process run (see `hf_moe_prune.calibration.distributed`).
    """
    check_recorders(recorders)  # their block-input samples are not gathered across processes
    observers = [ExpertObserver(block, requires) for block in blocks]
    # Each batch is summed on its own and the batch sums are added in batch order, in one process or across many,
    # so that data-parallel calibration gives exactly the single-process totals.
    sums = BatchSums(observers, num_batches=-(-len(rows) // batch_size))
    device = model_device(model)
    extra = {}
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params and not any(getattr(r, "needs_logits", False) for r in recorders):
        # the LM head is not needed for expert statistics (a teacher recorder for healing needs it)
        extra["logits_to_keep"] = 1
    if "use_cache" in params:
        extra["use_cache"] = False
    # honours transformers' disable_progress_bar(); one bar for all the ranks
    disabled = not progress or not is_progress_bar_enabled() or not is_main_process()
    was_training = model.training
    model.eval()
    try:
        for observer in (*observers, *recorders):
            observer.attach()
        with torch.no_grad():
            starts = local_batches(len(rows), batch_size)  # all the batches, or this rank's share of them
            bar = tqdm(starts, desc="calibration", unit="batch", disable=disabled)
            for start in bar:
                model(**model_inputs(model, rows[start : start + batch_size].to(device)), **extra)
                sums.take(observers)
                bar.set_postfix(peak_memory(device), refresh=False)
    finally:
        for observer in (*observers, *recorders):
            observer.detach()
        model.train(was_training)
    return sums.result()  # under a process group: a collective, and the same totals on every rank
