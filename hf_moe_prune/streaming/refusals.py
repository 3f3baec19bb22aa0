"""What streaming (plan before load) cannot do, asked of the registries' records and the family adapters: a
refusal names every reason and the fix, before any weight is read."""

from __future__ import annotations

from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS, METHODS
from hf_moe_prune.streaming.checkpoint import StreamingRefused

PROPAGATIONS = ("dense", "pruned")


def _forward_only() -> str:
    """The registered methods that need forward statistics only (no `fit`): the ones that stream."""
    return ", ".join(m.name for m in METHODS.values() if m.fit is None and not m.searches)


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
    if getattr(method, "searches", False) or (allocator is not None and allocator.searches):
        searching = method.name if getattr(method, "searches", False) else config.allocation
        reasons.append(f"{searching!r} judges candidate plans by running the whole model on held-out rows")
    if allocator is not None and not allocator.streams and not allocator.searches:
        needs = "re-runs the model" if allocator.reads_model else "records block inputs"
        reasons.append(f"allocation {config.allocation!r} {needs}")
    if getattr(config, "healing", None) and propagation == "pruned":
        reasons.append("healing distils toward the unpruned model, whose outputs pruned-prefix propagation never has")
    compensator = COMPENSATIONS.get(config.compensation)
    if compensator.searches:
        reasons.append(f"compensation {config.compensation!r} judges candidate plans on the whole model")
    elif not compensator.streams:
        # e.g. re-running whole blocks on their inputs, or folding the dropped experts, which streaming never reads
        needs = "re-runs each block on its inputs" if compensator.needs_inputs else "reads the dropped experts"
        reasons.append(f"compensation {config.compensation!r} {needs}, so it needs the whole block in memory")
    reasons += _layout_reasons(blocks)
    if propagation not in PROPAGATIONS:
        reasons.append(f"propagation must be one of {PROPAGATIONS}, not {propagation!r}")
    per_layer_counts = not isinstance(config.allocation, str) or ALLOCATIONS.get(config.allocation).fixed_counts
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


def _layout_reasons(blocks) -> list[str]:
    """What the family's layout keeps from streaming, whatever the request."""
    reasons = []
    if any(b.adapter.flat_expert_tensors for b in blocks):
        reasons.append("its experts are stored flattened")
    if any(b.adapter.parent_count_attrs for b in blocks):
        reasons.append("its layers hold several expert groups that share one count (text and vision experts)")
    if any(b.adapter.more_experts for b in blocks):
        reasons.append("its experts' weights are split over several modules")
    if any(b.adapter.layer_state for b in blocks):
        reasons.append("its decoder layers pass state besides hidden states from one to the next")
    return reasons


def layout_refusal(blocks) -> str | None:
    """Why this family's checkpoints cannot be calibrated layer by layer (`hf_moe_prune.calibrate` on a path)."""
    reasons = _layout_reasons(blocks)
    if not reasons:
        return None
    return (
        "Streaming calibration cannot read this checkpoint layer by layer: " + "; ".join(reasons) + ". Load the "
        "model and pass it to hf_moe_prune.calibrate instead of its path."
    )


def check_streamable(config: MoEPruneConfig, method, propagation: str, blocks) -> None:
    refusal = streaming_refusal(config, method, blocks, propagation=propagation)
    if refusal is not None:
        raise StreamingRefused(refusal)
