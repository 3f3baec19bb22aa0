"""transformers integration: `MoEPruneConfig` as a quantization method, and `from_pretrained(..., pruning_config=)`.

The quantizer only calls the library: before weights load it checks the request on the meta skeleton and tokenizes
the calibration data (so bad input fails before any weight is read), or, for a non-uniformly pruned checkpoint, shrinks
the skeleton to the saved per-layer expert counts; after weights load it runs `hf_moe_prune.prune`. Uniformly pruned
models then drop the quantizer identity so they save as stock checkpoints that plain transformers and vLLM load.
"""

from __future__ import annotations

import functools
import logging

import torch
from transformers import PreTrainedModel
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from .adapters import find_blocks
from .api import PruneJob, prepare, prune, run
from .config import QUANT_METHOD, MoEPruneConfig
from .neurons import narrow_experts
from .plan import PLAN_FILE, PrunePlan
from .portable import is_pruned_config, read_config_dict, register_marker, stock_config_for
from .reshape import slice_block
from .saving import attach_plan
from .streaming import StreamingRefused

logger = logging.getLogger(__name__)


class MoEPruneHfQuantizer(HfQuantizer):
    """Prunes routed experts while `from_pretrained` loads a model, and reloads non-uniformly pruned checkpoints."""

    requires_calibration = False

    def __init__(self, quantization_config: MoEPruneConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self._job: PruneJob | None = None

    def _process_model_before_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        if self.pre_quantized:
            if config.is_pruned_checkpoint:
                _shrink_skeleton(model, config.experts_per_layer, config.expert_widths)
        else:
            self._job = prepare(model, config)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            plan = _saved_plan(model)
            if plan is not None:
                attach_plan(model, plan)
            return model
        job, self._job = self._job, None
        plan = run(model, job)
        if plan.is_uniform:  # a stock model again: no quantizer, no quantization_config, nothing "quantized"
            self.remove_quantization_config(model)
            for module in model.modules():
                if isinstance(module, PreTrainedModel):
                    module.config._is_quantized = False
        return model

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def _shrink_skeleton(model, experts_per_layer: dict[str, int], expert_widths: dict[str, list[int]]) -> None:
    from .validation import check_pruned_metadata

    blocks = {b.name: b for b in find_blocks(model)}
    # The counts come from a possibly untrusted config.json: bounded by the skeleton's own shapes before any range().
    check_pruned_metadata(list(blocks.values()), experts_per_layer, expert_widths)
    experts_per_layer, expert_widths = experts_per_layer or {}, expert_widths or {}
    for name, count in experts_per_layer.items():
        # Which experts were kept does not matter here: the checkpoint holds exactly `count` of them, renumbered.
        slice_block(blocks[name], list(range(count)))
    for name, widths in expert_widths.items():
        # Likewise the neurons: the checkpoint holds the kept ones, renumbered; only the widths shape the skeleton.
        narrow_experts(blocks[name], list(range(len(widths))), {e: list(range(w)) for e, w in enumerate(widths)})


def _saved_plan(model) -> PrunePlan | None:
    from transformers.utils import cached_file

    try:
        path = cached_file(model.config.name_or_path, PLAN_FILE, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    if not path:
        return None
    from .validation import check_saved_plan

    plan = PrunePlan.load(path)  # checked; a re-save writes its counts, so it must describe these weights
    check_saved_plan(plan, find_blocks(model), str(path))
    return plan


_HUB_KEYS = ("cache_dir", "revision", "token", "local_files_only", "subfolder")


def _checkpoint_path(args: tuple, kwargs: dict):
    """The checkpoint `from_pretrained` was given, by position or by keyword (None for `from_pretrained(None)`)."""
    return args[0] if args else kwargs.get("pretrained_model_name_or_path")


def _install_from_pretrained() -> None:
    original = PreTrainedModel.__dict__["from_pretrained"].__func__
    if getattr(original, "_hf_moe_prune", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, *args, pruning_config: MoEPruneConfig | dict | None = None, **kwargs):
        # `pruning_config=` is `quantization_config=` under the name users look for; every Auto* class ends up here.
        if pruning_config is not None:
            if kwargs.get("quantization_config") is not None:
                raise ValueError(
                    "Pass either pruning_config= or quantization_config=, not both: pruning uses that slot."
                )
            kwargs["quantization_config"] = (
                pruning_config if isinstance(pruning_config, MoEPruneConfig) else MoEPruneConfig(**pruning_config)
            )
        path = _checkpoint_path(args, kwargs)
        # the checkpoint's config.json, read once (None when it cannot be resolved here)
        config_dict = read_config_dict(path, {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}) if path else None
        if kwargs.get("config") is None:
            # A checkpoint only this library loads correctly carries a marked config (hf_moe_prune.portable) that the
            # family's config class refuses by design: give that class the real config.
            config = stock_config_for(cls, config_dict)
            if config is not None:
                kwargs["config"] = config
        request = kwargs.get("quantization_config")
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
    import os

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


def _stream(cls, path, request: MoEPruneConfig, kwargs: dict):
    """`from_pretrained` with streaming: plan layer by layer, then load only the kept experts."""
    from .streaming import stream_prune

    refusal = _stream_kwargs_refusal(kwargs)
    if refusal:
        raise StreamingRefused(refusal)
    device = kwargs.get("device_map")
    hub = {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}  # `subfolder` is refused above
    model_class = None if getattr(cls, "__name__", "").startswith("Auto") else cls
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    model = stream_prune(
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


def register() -> None:
    """Register the `moe_prune` quantization method with transformers and accept `pruning_config=` (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not MoEPruneConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)  # a re-import (e.g. importlib.reload) re-registers
        register_quantization_config(QUANT_METHOD)(MoEPruneConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not MoEPruneHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(MoEPruneHfQuantizer)
    register_marker()
    _install_from_pretrained()
