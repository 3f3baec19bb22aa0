"""Opening a checkpoint for streaming: its meta skeleton (with everything outside the decoder layers loaded), its job,
and the readers of its files; shared by `stream_prune`, `stream_statistics` and elastic loading."""

from __future__ import annotations

import copy
import os
import re

import torch

from hf_moe_prune.streaming.checkpoint import Checkpoint, Loader, StreamingRefused, check_against_config
from hf_moe_prune.streaming.layers import decoder_layers
from hf_moe_prune.streaming.refusals import pruned_checkpoint_refusal


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


def _resolve(path: str, **hub_kwargs) -> str:
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    # The files land on disk, never all in memory: only the layer being calibrated or loaded is read.
    return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"], **hub_kwargs)


def open_checkpoint(path, make_job, dtype, model_class, model_config, hub_kwargs):
    """The checkpoint's skeleton with everything outside the decoder layers loaded, its job (`make_job(model,
    tokenizer)`, checked before any weight is read), and the readers of its files."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from hf_moe_prune.pipeline import tokenizer_at

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
    job = make_job(model, tokenizer_at(folder))
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
    # Everything outside the decoder layers.
    loader.load(model, {k: checkpoint.slice(k) for k in groups.get(None, {})})
    return model, job, checkpoint, loader, layers, groups, folder


def finish_compact(model, plan, layers, groups, checkpoint, loader, folder: str, path: str, progress: bool) -> None:
    """Read the kept experts of `plan` into the skeleton (`load_compact`), set the expert count, re-tie the
    embeddings, refuse parameters the files did not hold, and take the checkpoint's generation config."""
    from transformers import GenerationConfig

    from hf_moe_prune.adapters import get_adapter
    from hf_moe_prune.reshape import set_expert_count
    from hf_moe_prune.streaming.layers import load_compact

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
