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
4. The plan is decided from the statistics as after a full load, then only the kept experts' tensors are read
   (dropped experts' per-expert tensors are skipped, fused tensors and router rows are read row by row), so the
   compact model is the only model ever materialized.

Needs forward statistics only: methods with a `fit` (gradients: `compel`, `diep`), allocations that re-run the model
(`evolutionary`) or record block inputs (`outlier`), and compensation (`fisher` re-runs blocks, `merge` reads the
dropped experts) need the whole model; they are refused with that reason. Requires safetensors checkpoints.
"""

from __future__ import annotations

import copy
import os
import re
import time
from typing import Any

import torch

from ..adapters import get_adapter
from ..calibration.runner import peak_rss_kib
from ..calibration.stats import LayerStats
from ..config import MoEPruneConfig
from ..registries import ALLOCATIONS, COMPENSATIONS, METHODS
from ..reshape import check_same_count, set_expert_count
from .checkpoint import Checkpoint, Loader, StreamingRefused, check_against_config
from .layers import calibrate, decoder_layers, load_compact

PROPAGATIONS = ("dense", "pruned")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return peak_rss_kib() / 2**20


def _skeleton(model_config, dtype, model_class=None):
    """The model `model_config` describes, built on the current (meta) device: `model_class` if given, else the
    checkpoint's own architecture (multimodal parents such as Qwen3-Omni's thinker), else `AutoModelForCausalLM`'s."""
    import transformers

    if model_class is None:
        names = getattr(model_config, "architectures", None) or []
        model_class = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if model_class is not None:
        return model_class._from_config(model_config, dtype=dtype)
    try:
        return transformers.AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    except ValueError as error:
        raise StreamingRefused(
            f"Streaming cannot tell which model class builds this {model_config.model_type} checkpoint (its config "
            "names no `architectures`): pass `model_class=` to `stream_prune`, or load with that class's "
            "`from_pretrained`."
        ) from error


def _forward_only() -> str:
    """The registered methods that need forward statistics only (no `fit`): the ones that stream."""
    return ", ".join(name for name in METHODS.names() if METHODS.get(name).fit is None)


def pruned_checkpoint_refusal(model_config) -> str | None:
    """Why the checkpoint `model_config` describes cannot be re-pruned by streaming, or None for a stock checkpoint.

    A checkpoint saved by this library with per-layer expert counts or neuron widths (`quantization_config` with
    `quant_method="moe_prune"` and `experts_per_layer` / `expert_widths`) holds fewer or narrower experts than its
    family's config builds; streaming reads stock layouts only. Uniformly pruned checkpoints are stock and stream.
    """
    for config in _configs(model_config):
        quant = getattr(config, "quantization_config", None)
        if quant is None:
            continue
        field = quant.get if isinstance(quant, dict) else lambda key, q=quant: getattr(q, key, None)
        if field("quant_method") != "moe_prune":
            continue
        if field("expert_widths"):
            return (
                "This checkpoint is already neuron-pruned (its quantization_config has expert_widths: experts of "
                "different widths, stored as experts.groups.*); pruning it again is not supported, with or without "
                "streaming. Prune the original checkpoint once instead, combining units with method_kwargs="
                "{'drop_experts': ...} if you want both; to use this one as it is, load it with from_pretrained(path) "
                "without pruning_config."
            )
        if field("experts_per_layer"):
            return (
                "This checkpoint is already pruned with per-layer expert counts (quantization_config."
                "experts_per_layer); streaming re-pruning needs a stock checkpoint. Load it with "
                "from_pretrained(path) (no streaming) and call hf_moe_prune.prune(model, cfg), or pass "
                "pruning_config=MoEPruneConfig(..., streaming=False)."
            )
    return None


def _configs(model_config):
    """`model_config` and its sub-configs (text, thinker, ...), where a pruning config may sit."""
    yield model_config
    for key in getattr(model_config, "sub_configs", None) or {}:
        sub = getattr(model_config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            yield from _configs(sub)


def streaming_refusal(
    config: MoEPruneConfig, method, blocks, *, propagation: str | None = None, model_config=None
) -> str | None:
    """Why the pruning job cannot run streaming (plan before load), or None when it can.

    Pure and cheap: reads the request, the method and the blocks found on a meta skeleton, never a weight or a file.
    `from_pretrained` can call it to choose streaming automatically and fall back to a full load on a reason.

    Args:
        config (`MoEPruneConfig`): The pruning request.
        method: The method's registry entry (`PruneJob.method`: `.name`, `.fit`).
        blocks (`list`): The MoE blocks of the model (`PruneJob.blocks`, as `prepare` finds them on a meta skeleton).
        propagation (`str`, *optional*): `"dense"` or `"pruned"`; defaults to `config.propagation`.
        model_config (`PretrainedConfig`, *optional*): The checkpoint's config (`AutoConfig.from_pretrained(path)`);
            when given, encoder-decoder models and checkpoints this library already pruned non-uniformly (per-layer
            counts, neuron widths) are refused too.

    Returns:
        `str | None`: A sentence naming every reason and the fix (the text `stream_prune` raises as
        `StreamingRefused`, a `ValueError`), or None. What only the files can tell is checked by `stream_prune`
        before any layer is calibrated, not here: no safetensors files (`StreamingRefused`), tensors that do not fit
        the config (a plain `ValueError`: the checkpoint is broken, a full load fails on it too).
    """
    if model_config is not None:
        refusal = pruned_checkpoint_refusal(model_config)
        if refusal is not None:
            return refusal
    propagation = getattr(config, "propagation", "dense") if propagation is None else propagation
    reasons = []
    if model_config is not None and getattr(model_config, "is_encoder_decoder", False):
        reasons.append("it is an encoder-decoder model (streaming runs one stack of decoder layers)")
    if method.fit is not None:
        reasons.append(f"method {method.name!r} needs gradients through the whole model")
    allocator = ALLOCATIONS.get(config.allocation) if isinstance(config.allocation, str) else None
    if allocator is not None and not allocator.streams:
        needs = "re-runs the model" if allocator.reads_model else "records block inputs"
        reasons.append(f"allocation {config.allocation!r} {needs}")
    compensator = COMPENSATIONS.get(config.compensation)
    if not compensator.streams:
        # e.g. re-running whole blocks on their inputs, or folding the dropped experts, which streaming never reads
        needs = "re-runs each block on its inputs" if compensator.needs_inputs else "reads the dropped experts"
        reasons.append(f"compensation {config.compensation!r} {needs}, so it needs the whole block in memory")
    if any(b.adapter.flat_expert_tensors for b in blocks):
        reasons.append("its experts are stored flattened")
    if any(b.adapter.parent_count_attrs for b in blocks):
        reasons.append("its layers hold several expert groups that share one count (text and vision experts)")
    if any(b.adapter.more_experts for b in blocks):
        reasons.append("its experts' weights are split over several modules")
    if any(b.adapter.layer_state for b in blocks):
        reasons.append("its decoder layers pass state besides hidden states from one to the next")
    if propagation not in PROPAGATIONS:
        reasons.append(f"propagation must be one of {PROPAGATIONS}, not {propagation!r}")
    per_layer_counts = isinstance(config.allocation, (list, tuple, dict)) or config.allocation == "uniform"
    if propagation == "pruned" and (config.unit != "expert" or not per_layer_counts):
        reasons.append(
            "pruned-prefix propagation decides layer by layer: it needs unit='expert' and uniform or explicit "
            "per-layer counts"
        )
    if not reasons:
        return None
    return (
        "Streaming (plan before load) cannot do this: " + "; ".join(reasons) + ". Load the model first and prune "
        f"it (streaming=False), or choose a forward-only method ({_forward_only()})."
    )


def _check_streamable(config: MoEPruneConfig, method, propagation: str, blocks) -> None:
    refusal = streaming_refusal(config, method, blocks, propagation=propagation)
    if refusal is not None:
        raise StreamingRefused(refusal)


def _resolve(path: str, **hub_kwargs) -> str:
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    # The files land on disk, never all in memory: only the layer being calibrated or loaded is read.
    return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"], **hub_kwargs)


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
    from accelerate import init_empty_weights
    from transformers import AutoConfig, GenerationConfig

    from ..api import decide, prepare, statistics_needed, tokenizer_at

    start = time.perf_counter()
    folder = _resolve(path, **hub_kwargs)
    if model_config is None:
        model_config = AutoConfig.from_pretrained(folder)
    else:  # the caller's (from_pretrained's, with its attn_implementation, ...): never modified
        model_config = copy.deepcopy(model_config)
    refusal = pruned_checkpoint_refusal(model_config)
    if refusal is not None:
        raise StreamingRefused(f"Cannot stream-prune {path}: {refusal}")
    if getattr(model_config, "is_encoder_decoder", False):
        raise StreamingRefused(
            f"Streaming (plan before load) runs one stack of decoder layers; {model_config.model_type} is an "
            "encoder-decoder model. Load it first and prune it (streaming=False)."
        )
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if dtype in (None, "auto"):
        dtype = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary tables) computed for real
        model = _skeleton(model_config, dtype, model_class)
    model.config.name_or_path = path
    model.eval()
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # so that tied embeddings count once
    job = prepare(model, config, tokenizer or tokenizer_at(folder))
    _check_streamable(config, job.method, propagation, job.blocks)
    params_before = sum(p.numel() for p in model.parameters())
    checkpoint = Checkpoint(folder)
    loader = Loader(model, folder, dtype)
    # A config that disagrees with the weights would otherwise leave meta parameters that fail deep in a kernel.
    check_against_config(model, checkpoint, loader, path)
    layers_name, layers = decoder_layers(model, job.blocks)
    groups: dict[int | None, dict[str, str]] = {}
    for key in checkpoint.keys:
        runtime, _ = loader.runtime_key(key)
        match = re.match(rf"^{re.escape(layers_name)}\.(\d+)\.", runtime)
        groups.setdefault(int(match.group(1)) if match else None, {})[key] = runtime
    # 1. Everything outside the decoder layers.
    loader.load(model, {k: checkpoint.slice(k) for k in groups.get(None, {})})
    requires, _, _ = statistics_needed(job)
    stats = {b.name: LayerStats(b.num_experts) for b in job.blocks}
    kept_so_far: dict[str, list[int]] = {}
    if job.rows is not None:
        stats = calibrate(model, job, layers, groups, checkpoint, loader, requires, propagation, kept_so_far, progress)
    plan = decide(job, model.config, stats, None, {"config": config, "seed": config.seed}, time.perf_counter() - start)
    if kept_so_far:  # pruned-prefix propagation already decided every layer
        for block_plan in plan.blocks:
            block_plan.kept = kept_so_far[block_plan.name]
    check_same_count(get_adapter(model), [b.num_kept for b in plan.blocks])
    load_compact(model, plan, layers, groups, checkpoint, loader, progress)
    set_expert_count(model, get_adapter(model), max(b.num_kept for b in plan.blocks))
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise RuntimeError(f"The checkpoint at {path} lacks weights for {len(missing)} parameters: {missing[:5]}.")
    try:
        model.generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        pass
    from ..saving import attach_plan

    plan.parameters = {"before": params_before, "after": sum(p.numel() for p in model.parameters())}
    plan.calibration["streaming"] = {
        "propagation": propagation,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    attach_plan(model, plan)
    return model
