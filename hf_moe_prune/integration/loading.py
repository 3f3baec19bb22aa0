"""`from_pretrained(..., pruning_config=...)`: the one global patch of transformers (see `install_from_pretrained`)."""

from __future__ import annotations

import functools
import logging
import os

import torch
from transformers import PreTrainedModel

from hf_moe_prune.api import prune
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.elastic import elastic_block
from hf_moe_prune.export.portable import is_pruned_config, read_config_dict, stock_config_for
from hf_moe_prune.integration.quantized import prune_and_quantize
from hf_moe_prune.streaming import StreamingRefused, stream_prune
from hf_moe_prune.streaming.elastic import load_size

logger = logging.getLogger(__name__)

_HUB_KEYS = ("cache_dir", "revision", "token", "local_files_only", "subfolder")


def _checkpoint_path(args: tuple, kwargs: dict):
    """The checkpoint `from_pretrained` was given, by position or by keyword (None for `from_pretrained(None)`)."""
    return args[0] if args else kwargs.get("pretrained_model_name_or_path")


def install_from_pretrained() -> None:
    """Wrap `PreTrainedModel.from_pretrained` once (idempotent) so that it takes `pruning_config=`.

    This is the library's one global patch, and why it exists: transformers routes `quantization_config=` to our
    quantizer, but it cannot (1) accept the `pruning_config=` name users look for, (2) give a family's config class
    the real values of a checkpoint whose config.json is marked so that stock transformers refuses it
    (`hf_moe_prune.export.portable`), (3) prune layer by layer from the safetensors files before the model exists
    (`streaming`), or (4) prune an already pruned checkpoint further instead of silently reloading its own plan.
    Every other call goes to transformers unchanged.
    """
    original = PreTrainedModel.__dict__["from_pretrained"].__func__
    if getattr(original, "_hf_moe_prune", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, *args, pruning_config: MoEPruneConfig | dict | None = None, **kwargs):
        # `pruning_config=` is `quantization_config=` under the name users look for; every Auto* class ends up here.
        if pruning_config is not None:
            if isinstance(kwargs.get("quantization_config"), MoEPruneConfig):
                raise ValueError("Pass the pruning config once: as pruning_config= or as quantization_config=.")
            if kwargs.get("quantization_config") is not None:  # prune, then load the kept weights quantized
                return prune_and_quantize(_load, cls, args, kwargs, pruning_config)
            kwargs["quantization_config"] = (
                pruning_config if isinstance(pruning_config, MoEPruneConfig) else MoEPruneConfig(**pruning_config)
            )
        path = _checkpoint_path(args, kwargs)
        # the checkpoint's config.json, read once (None when it cannot be resolved here)
        config_dict = read_config_dict(path, {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}) if path else None
        if kwargs.get("config") is None:
            # A checkpoint only this library loads correctly carries a marked config (hf_moe_prune.export.portable)
            # that the family's config class refuses by design: give that class the real config.
            config = stock_config_for(cls, config_dict)
            if config is not None:
                kwargs["config"] = config
        request = kwargs.get("quantization_config")
        if isinstance(request, MoEPruneConfig) and path is not None and elastic_block(config_dict) is not None:
            # one size of an elastic checkpoint: its saved plan, only its experts' bytes read (no calibration)
            return _stream(cls, path, request, _without_path(args, kwargs), load=load_size)
        if isinstance(request, MoEPruneConfig) and path is not None and not request.is_pruned_checkpoint:
            pruned = is_pruned_config(config_dict)
            automatic = request.streaming is None and not pruned and _streams(cls, path, config_dict, args, kwargs)
            if request.streaming or automatic:
                try:
                    return _stream(cls, path, request, _without_path(args, kwargs))
                except StreamingRefused as refusal:
                    if request.streaming:  # asked for: say why not
                        raise
                    logger.info("Loading the whole model, then pruning it: %s", refusal)
            if pruned:
                # transformers would keep the checkpoint's own pruning config and silently ignore the new request:
                # load the pruned model as it is, then prune it further.
                kwargs.pop("quantization_config")
                model = original(cls, *args, **kwargs)
                prune(model, request)
                return model
        return original(cls, *args, **kwargs)

    from_pretrained._hf_moe_prune = True
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


def _load(cls, *args, **kwargs):
    return cls.from_pretrained(*args, **kwargs)  # through this wrapper again (pruning_config= handling)


def _without_path(args: tuple, kwargs: dict) -> dict:
    """`kwargs` of a from_pretrained call less the checkpoint path (given by keyword) and positional extras."""
    if len(args) > 1:
        raise ValueError(
            "Streaming pruning takes the checkpoint path as the only positional argument of from_pretrained; pass "
            "the other arguments by keyword."
        )
    return {k: v for k, v in kwargs.items() if k != "pretrained_model_name_or_path"}


# What Auto* classes pass along, and the loading options streaming honours.
_STREAM_KWARGS = {"quantization_config", "dtype", "torch_dtype", "device_map", "config", "adapter_kwargs"}
_STREAM_KWARGS |= {"trust_remote_code", "token", "revision", "cache_dir", "local_files_only"}


def _stream_kwargs_refusal(kwargs: dict) -> str | None:
    unsupported = sorted(key for key in set(kwargs) - _STREAM_KWARGS if kwargs[key] not in (None, {}, False))
    if unsupported:
        return (
            f"Streaming pruning in from_pretrained does not take {unsupported}: load without them, or pass "
            "streaming=False to load the whole model first."
        )
    device = kwargs.get("device_map")
    if (device is not None and not isinstance(device, (str, torch.device))) or device == "auto":
        return "Streaming pruning loads onto one device: give device_map='cpu', 'cuda:0', ... or none."
    return None


def _streams(cls, path, config_dict: dict | None, args: tuple, kwargs: dict) -> bool:
    """Whether `streaming=None` (automatic) streams this call: a local safetensors checkpoint or a Hub id, loaded
    with the class it was saved from (its `architectures`: a base-model class reads other key names) onto the CPU,
    the path alone as positional argument, and only loading options streaming honours. The request itself (method,
    allocation, family) is checked by `stream_prune` before any weight is read; a refusal falls back to a full
    load."""
    rest = {k: v for k, v in kwargs.items() if k != "pretrained_model_name_or_path"}
    if len(args) > 1 or _stream_kwargs_refusal(rest):
        return False
    if str(kwargs.get("device_map") or "cpu") != "cpu":
        return False  # streaming calibrates on the CPU: a model headed for an accelerator calibrates there instead
    path = str(path)
    if os.path.isdir(path) and not any(name.endswith(".safetensors") for name in os.listdir(path)):
        return False
    if os.path.isfile(path) or config_dict is None:  # no checkpoint folder, or unresolvable: a full load reports it
        return False
    return cls.__name__ in (config_dict.get("architectures") or [])


def _stream(cls, path, request: MoEPruneConfig, kwargs: dict, load=stream_prune):
    """`from_pretrained` with streaming: plan layer by layer (`load`: or read a saved plan), then load only the kept
    experts."""
    refusal = _stream_kwargs_refusal(kwargs)
    if refusal:
        raise StreamingRefused(refusal)
    device = kwargs.get("device_map")
    hub = {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}  # `subfolder` is refused above
    model_class = None if getattr(cls, "__name__", "").startswith("Auto") else cls
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    model = load(
        str(path),
        request,
        request.tokenizer,
        propagation=request.propagation,
        dtype=dtype,
        model_class=model_class,
        model_config=kwargs.get("config"),
        **hub,
    )
    return model.to(device) if device is not None else model
