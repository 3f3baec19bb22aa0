"""Prune and quantize in one `from_pretrained`: `pruning_config=p, quantization_config=q`.

The checkpoint is pruned in its own precision (layer by layer from the files whenever the request allows it, so the
full model is never in memory), the compact model is written to a temporary folder as a stock checkpoint, and that
folder is loaded through the given quantizer (bitsandbytes, torchao, compressed-tensors, ... whichever transformers
has), with the caller's `device_map`. Peak memory is the compact model in the checkpoint's precision, then the
quantized one; the temporary folder (the compact checkpoint's size) is removed afterwards.

The quantizer takes the `quantization_config` slot of the saved checkpoint, which a plan with per-layer counts or
neuron widths needs for itself: the plan must be portable (the same number of whole experts in every layer), and a
request that cannot give one is refused before any weight is read.
"""

from __future__ import annotations

import copy
import logging
import tempfile

from hf_moe_prune.adapters import find_blocks
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.attach import attach_plan

logger = logging.getLogger(__name__)

# Arguments for the quantized load only: the pruning pass runs on the CPU in the checkpoint's precision.
_QUANTIZED_LOAD_ONLY = ("quantization_config", "device_map", "max_memory", "offload_folder")


def portable_request(request: MoEPruneConfig | dict) -> MoEPruneConfig:
    """`request` as a portable pruning config (a copy), or a `ValueError` saying why it cannot be one."""
    request = request if isinstance(request, MoEPruneConfig) else MoEPruneConfig(**request)
    if request.portable:
        return request
    portable = copy.copy(request)
    portable.portable = True
    try:
        portable.post_init()
    except ValueError as error:
        raise ValueError(
            "pruning_config= with quantization_config=: the quantizer takes the checkpoint's quantization_config "
            "slot, so the pruned model must be a stock one (the same number of whole experts in every layer). "
            f"{error}"
        ) from None
    return portable


def prune_and_quantize(load, cls, args: tuple, kwargs: dict, request: MoEPruneConfig | dict):
    """`from_pretrained(path, pruning_config=request, quantization_config=q, ...)`: prune, then load the compact
    checkpoint through the quantizer (see the module docstring). `load(cls, *args, **kwargs)` is `from_pretrained`
    with this library's `pruning_config=` handling."""
    request = portable_request(request)
    quantized_kwargs = {k: kwargs[k] for k in _QUANTIZED_LOAD_ONLY if k in kwargs}
    pruning_kwargs = {k: v for k, v in kwargs.items() if k not in _QUANTIZED_LOAD_ONLY}
    pruned = load(cls, *args, pruning_config=request, **pruning_kwargs)
    plan = pruned.moe_pruning_plan
    source = pruned.config.name_or_path
    # the compact checkpoint has its own (patched) config: the caller's `config=` is not passed on
    rest = {k: v for k, v in pruning_kwargs.items() if k in ("dtype", "torch_dtype", "trust_remote_code")}
    with tempfile.TemporaryDirectory(prefix="hf_moe_prune_quantize_") as folder:
        pruned.save_pretrained(folder, overwrite=True)
        del pruned
        try:
            model = load(cls, folder, **quantized_kwargs, **rest)
        except Exception as error:  # the pruning worked; say which step failed and what to do instead
            method = getattr(kwargs["quantization_config"], "quant_method", "the quantizer")
            raise RuntimeError(
                f"Pruning worked, but {getattr(method, 'value', method)} could not load the pruned model "
                f"({type(error).__name__}: {error}). Prune and save without quantization_config, then quantize the "
                "saved folder with other settings or another quantizer."
            ) from error
    model.config.name_or_path = source
    attach_plan(model, plan)
    warn_unquantized_experts(model, kwargs["quantization_config"])
    return model


def warn_unquantized_experts(model, quantization_config) -> None:
    """Say when the quantizer left the fused routed experts (most of an MoE model) in floating point."""
    total = sum(p.numel() for p in model.parameters())
    left = [
        p
        for block in find_blocks(model)
        for p in block.experts.parameters()
        if p.dim() == 3 and p.is_floating_point() and p.element_size() >= 2
    ]
    count = sum(p.numel() for p in left)
    if total and count:
        method = getattr(quantization_config, "quant_method", type(quantization_config).__name__)
        method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
        logger.warning(
            "%s quantized the linear layers only: the fused routed experts (%.0f%% of the parameters) stay in %s, as "
            "3-D expert tensors are not nn.Linear modules it can replace. To quantize the experts too, use "
            "llm-compressor on the saved pruned checkpoint (README, 'Prune, then quantize').",
            method,
            100 * count / total,
            str(left[0].dtype).replace("torch.", ""),
        )
