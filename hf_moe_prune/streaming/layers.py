"""Running a model one decoder layer at a time for streaming: capture each layer's inputs, calibrate layer by layer,
then load only the kept experts."""

from __future__ import annotations

import inspect
import re

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_moe_prune.adapters import find_blocks
from hf_moe_prune.allocation import keep_counts
from hf_moe_prune.calibration.observers import ExpertObserver
from hf_moe_prune.calibration.runner import peak_memory
from hf_moe_prune.calibration.stats import LayerStats
from hf_moe_prune.pipeline.decide import kept_experts
from hf_moe_prune.plan import PrunePlan
from hf_moe_prune.reshape import mask_experts, slice_block
from hf_moe_prune.streaming.checkpoint import EXPERT_INDEX, KeptRows, StreamingRefused, release, trim
from hf_moe_prune.streaming.kernels import RowBuckets


class _StopForward(Exception):
    """Raised by the last captured layer: nothing after the decoder layers is needed."""


def decoder_layers(model: nn.Module, blocks) -> tuple[str, nn.ModuleList]:
    """The name and the `ModuleList` of the decoder layers holding the MoE blocks."""
    name = re.match(r"^(.*)\.\d+(?:\.|$)", blocks[0].name + ".").group(1)
    layers = model.get_submodule(name)
    if not isinstance(layers, nn.ModuleList):
        raise StreamingRefused(f"{name} is not a list of decoder layers; streaming does not support this layout.")
    return name, layers


def capture_layer_inputs(model, layers: nn.ModuleList, rows: torch.Tensor, batch_size: int):
    """Per batch: the hidden states entering the first layer and the other inputs of every layer."""
    captured: list[list[tuple[tuple, dict]]] = []
    current: list[tuple[tuple, dict]] = []

    def stub(index):
        def forward(*args, **kwargs):
            current.append((args, kwargs))
            if index == len(layers) - 1:
                raise _StopForward
            return _hidden_of(args, kwargs)

        return forward

    for i, layer in enumerate(layers):
        layer.forward = stub(i)
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                current = []
                try:
                    model(input_ids=rows[start : start + batch_size], **extra)
                except _StopForward:
                    pass
                captured.append(current)
    finally:
        for layer in layers:
            del layer.forward
    return captured


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _run_layer(layer, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    args = (hidden, *args[1:]) if args else args
    if not args:
        kwargs = {**kwargs, "hidden_states": hidden}
    out = layer(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def calibrate(model, job, layers, groups, checkpoint, loader, requires, propagation, kept_so_far, progress):
    """One pass over the decoder layers, each loaded once: the scoring rows run through it with the observers
    attached (statistics per block), the held-out rows (`job.eval_rows`) after the observers are detached, always
    through the unpruned layer. Returns the statistics, the held-out rows' last hidden states per batch (None
    without held-out rows) and, when the job heals, the scoring rows' last hidden states per batch (else None)."""
    from hf_moe_prune.pipeline import statistics_needed

    config = job.config
    captured = capture_layer_inputs(model, layers, job.rows, config.batch_size) if job.rows is not None else []
    hidden = [_hidden_of(*batch[0]) for batch in captured]
    held = [] if job.eval_rows is None else capture_layer_inputs(model, layers, job.eval_rows, config.batch_size)
    held_hidden = [_hidden_of(*batch[0]) for batch in held]
    by_layer: dict[int, list] = {}
    for block in job.blocks:
        by_layer.setdefault(block.layer_idx, []).append(block)
    counts = keep_counts(job.blocks, config) if propagation == "pruned" else {}
    method_kwargs = statistics_needed(job)[1]
    stats: dict[str, LayerStats] = {}
    bar = tqdm(range(len(layers)), desc="streaming calibration", unit="layer", disable=not progress)
    for i in bar:
        layer = layers[i]
        loader.load(model, {k: checkpoint.slice(k) for k in groups.get(i, {})})
        observers = [ExpertObserver(block, requires) for block in by_layer.get(i, [])] if captured else []
        for observer in observers:
            observer.attach()
        try:
            # oneDNN caches state per product shape; bucketed row counts keep that bounded whatever the depth
            with torch.no_grad(), RowBuckets():
                outputs = [_run_layer(layer, h, *captured[b][i]) for b, h in enumerate(hidden)]
        finally:
            for observer in observers:
                observer.detach()
        for observer in observers:
            stats[observer.block.name] = observer.stats.cpu()
        if propagation == "pruned" and observers:
            decided = {}
            for observer in observers:
                block = observer.block
                generator = torch.Generator().manual_seed(config.seed)
                scores = job.method.score(stats[block.name], generator, **method_kwargs).double()
                decided[block.name] = kept_experts(
                    job.method, stats[block.name], scores, counts[block.name], block, method_kwargs
                )
            kept_so_far.update(decided)
            with torch.no_grad(), RowBuckets(), mask_experts(by_layer[i], decided):
                outputs = [_run_layer(layer, h, *captured[b][i]) for b, h in enumerate(hidden)]
        hidden = outputs
        if held:  # the teacher's path: no observer attached, no expert masked
            with torch.no_grad(), RowBuckets():
                held_hidden = [_run_layer(layer, h, *held[b][i]) for b, h in enumerate(held_hidden)]
        release(layer)
        bar.set_postfix(peak_memory(), refresh=False)
    # the scoring rows after the last unpruned layer: healing's teacher (dense propagation only)
    scoring = hidden if getattr(job.config, "healing", None) and propagation == "dense" and captured else None
    return stats, held_hidden if held else None, scoring


def head_teacher(
    model, layers: nn.ModuleList, rows: torch.Tensor, finals: list[torch.Tensor], batch_size: int, top_k: int = 32
):
    """`TeacherRecords` of `rows` from their hidden states after the last decoder layer (`finals`, per batch): the
    model's own forward runs with every decoder layer replaced by one that returns them, so the family's final norm,
    LM head (and any logit processing) turn them into logits; the layers' weights are not needed."""
    from hf_moe_prune.calibration.teacher import TeacherRecorder, logits_of, shift_of

    recorder = TeacherRecorder(top_k, shift=shift_of(model))
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    for batch, start in enumerate(range(0, len(rows), batch_size)):
        ids = rows[start : start + batch_size]
        for layer in layers:
            layer.forward = lambda *args, final=finals[batch], **kwargs: final
        try:
            with torch.no_grad():
                output = model(input_ids=ids, **extra)
        finally:
            for layer in layers:
                del layer.forward
        recorder.add(logits_of(model, getattr(output, "logits", None), ids), ids)
    return recorder.result()


def load_compact(model, plan: PrunePlan, layers, groups, checkpoint, loader, progress) -> None:
    """Read only the kept experts' tensors into the model, shrunk to the plan first."""
    from hf_moe_prune.reshape.grouped import narrow_experts

    plans = {b.name: b for b in plan.blocks}
    per_layer: dict[int, list] = {}
    for block in find_blocks(model):
        per_layer.setdefault(block.layer_idx, []).append(block)
    bar = tqdm(range(len(layers)), desc="loading kept experts", unit="layer", disable=not progress)
    for i in bar:
        subset = {}
        for key, runtime in groups.get(i, {}).items():
            value = checkpoint.slice(key)
            for block in per_layer.get(i, []):
                kept = plans[block.name].kept
                if not runtime.startswith(block.name + "."):
                    continue
                match = EXPERT_INDEX.search(key)
                experts_prefix = f"{block.name}.{block.adapter.experts}."
                if match and runtime.startswith(experts_prefix):  # one expert's tensor, merged by transformers
                    expert = int(match.group(1))
                    num_experts = block.num_experts
                    if num_experts <= expert < num_experts + block.trailing_rows:
                        # a trailing class stored as an expert (LongCat-Flash's zero experts): kept, after the experts
                        position = len(kept) + expert - num_experts
                    elif expert in kept:
                        position = kept.index(expert)
                    else:
                        value = None  # a dropped expert: never read
                        break
                    key = key[: match.start()] + str(position) + key[match.end() :]
                    break
                axes = {f"{block.name}.{path}": dim for path, dim in block.adapter.expert_tensors()}
                if runtime.startswith(experts_prefix) and "." not in runtime[len(experts_prefix) :]:
                    axes[runtime] = 0  # a fused [E, ...] expert tensor stored as the model holds it
                if runtime in axes:
                    value = KeptRows(value, kept, axes[runtime], block.num_experts, block.trailing_rows)
                break
            if value is not None:
                subset[key] = value
        for block in per_layer.get(i, []):
            slice_block(block, list(range(plans[block.name].num_kept)))  # shapes only: the skeleton is meta
        loader.load(model, subset)
        trim()
        for block in per_layer.get(i, []):
            if plans[block.name].neurons:
                narrow_experts(block, plans[block.name].kept, plans[block.name].neurons)
        bar.set_postfix(peak_memory(), refresh=False)
