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

import ctypes
import glob
import inspect
import json
import os
import re
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import find_blocks, get_adapter
from .allocation import keep_counts, select_experts
from .calibration.observers import ExpertObserver
from .calibration.runner import peak_memory, peak_rss_kib
from .calibration.stats import LayerStats
from .config import MoEPruneConfig
from .plan import PrunePlan
from .reshape import check_same_count, mask_experts, set_expert_count, slice_block

PROPAGATIONS = ("dense", "pruned")
_EXPERT_INDEX = re.compile(r"(?<=experts\.)(\d+)(?=\.)")


class _StopForward(Exception):
    """Raised by the last captured layer: nothing after the decoder layers is needed."""


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return peak_rss_kib() / 2**20


class _KeptRows:
    """A lazy checkpoint tensor that reads only rows `kept` of axis `dim` when transformers' loader materializes it."""

    def __init__(self, source, kept: list[int], dim: int, num_experts: int = 0, trailing: int = 0):
        self.source, self.kept, self.dim = source, kept, dim
        self.num_experts, self.trailing = num_experts, trailing

    def __getitem__(self, item):
        parts = []
        rows = self.kept
        if self.trailing and self.source.get_shape()[self.dim] == self.num_experts + self.trailing:
            # the adapter's trailing non-routed rows (shared/zero experts, a skip class) follow, as `slice_block` keeps
            rows = [*rows, *range(self.num_experts, self.num_experts + self.trailing)]
        for e in rows:  # one read per kept row: dropped experts are never read
            index = (slice(None),) * self.dim + (slice(e, e + 1),)
            parts.append(self.source[index])
        return torch.cat(parts, dim=self.dim)


def _open(safe_open, file: str):
    # pread copies each slice straight into its tensor; a memory map would keep every page read so far resident (and
    # counted in the process's memory) until the file is closed, i.e. the whole checkpoint after calibration.
    try:
        return safe_open(file, framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors < 0.8
        return safe_open(file, framework="pt", device="cpu")


class _Checkpoint:
    """The safetensors files of a checkpoint, opened lazily (nothing is read until a slice is)."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted({os.path.join(folder, name) for name in json.load(f)["weight_map"].values()})
        if not files:
            raise ValueError(
                f"{folder} holds no .safetensors files: streaming reads safetensors checkpoints. Convert it with "
                "save_pretrained, or prune after loading (streaming=False)."
            )
        self.handles = [_open(safe_open, file) for file in files]
        self.keys = {key: handle for handle in self.handles for key in handle.keys()}

    def slice(self, key: str):
        return self.keys[key].get_slice(key)


class _Loader:
    """transformers' own weight loading (renamings and conversions of the checkpoint layout) for a subset of keys."""

    def __init__(self, model: nn.Module, path: str, dtype: torch.dtype | None):
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import (
                WeightConverter,
                WeightRenaming,
                convert_and_load_state_dict_in_model,
                rename_source_key,
            )
            from transformers.modeling_utils import LoadStateDictConfig
        except ImportError as error:  # pragma: no cover - depends on the installed transformers
            raise RuntimeError(
                f"streaming uses transformers' weight loader, which this transformers version does not expose "
                f"({error}); prune after loading instead (streaming=False)."
            ) from None
        mapping = get_model_conversion_mapping(model, None, None)
        self.renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        self.converters = [m for m in mapping if isinstance(m, WeightConverter)]
        self._rename = rename_source_key
        self._load = convert_and_load_state_dict_in_model
        parameters = inspect.signature(convert_and_load_state_dict_in_model).parameters
        self._extra = {"tp_plan": None} if "tp_plan" in parameters else {}  # transformers < 5.6 wants it
        self.config = LoadStateDictConfig(pretrained_model_name_or_path=path, weight_mapping=mapping, dtype=dtype)

    def runtime_key(self, key: str) -> tuple[str, bool]:
        """The model's parameter name a checkpoint key loads into, and whether a converter (a merge, ...) acts."""
        renamed, pattern = self._rename(key, self.renamings, self.converters)
        return renamed, pattern is not None

    def load(self, model: nn.Module, state_dict: dict[str, Any]) -> None:
        from transformers.utils import logging

        if not state_dict:
            return
        enabled = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # one "Loading weights" bar per layer would drown ours
        try:
            self._load(model=model, state_dict=state_dict, load_config=self.config, **self._extra)
        finally:
            if enabled:
                logging.enable_progress_bar()


def _release(module: nn.Module) -> None:
    """Give the memory of `module`'s parameters back (they become meta again); buffers stay."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type != "meta":
                sub._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
    _trim()


def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the next layer's tensors may not fit in
    the holes), so the process's memory follows what is alive."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _decoder_layers(model: nn.Module, blocks) -> tuple[str, nn.ModuleList]:
    """The name and the `ModuleList` of the decoder layers holding the MoE blocks."""
    name = re.match(r"^(.*)\.\d+(?:\.|$)", blocks[0].name + ".").group(1)
    layers = model.get_submodule(name)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{name} is not a list of decoder layers; streaming does not support this model layout.")
    return name, layers


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
        raise ValueError(
            f"Streaming cannot tell which model class builds this {model_config.model_type} checkpoint (its config "
            "names no `architectures`): pass `model_class=` to `stream_prune`, or load with that class's "
            "`from_pretrained`."
        ) from error


def _check_streamable(config: MoEPruneConfig, method, propagation: str, blocks) -> None:
    reasons = []
    if method.fit is not None:
        reasons.append(f"method {method.name!r} needs gradients through the whole model")
    if config.allocation in ("evolutionary", "outlier"):
        reasons.append(f"allocation {config.allocation!r} re-runs the model or records block inputs")
    if config.compensation != "none":
        # fisher re-runs whole blocks; merge folds the dropped experts' weights, which streaming never reads
        reasons.append(f"compensation {config.compensation!r} needs the whole block in memory")
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
    if reasons:
        raise ValueError(
            "Streaming (plan before load) cannot do this: " + "; ".join(reasons) + ". Load the model first and prune "
            "it (streaming=False), or choose a forward-only method (reap, ean, frequency, soft_count, random, tenp)."
        )


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

    Returns:
        `PreTrainedModel`: the compact model, with its plan attached (`model.moe_pruning_plan`).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, GenerationConfig

    from .api import decide, prepare, statistics_needed, tokenizer_at

    start = time.perf_counter()
    folder = _resolve(path, **hub_kwargs)
    model_config = AutoConfig.from_pretrained(folder)
    if getattr(model_config, "is_encoder_decoder", False):
        raise ValueError(
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
    checkpoint = _Checkpoint(folder)
    loader = _Loader(model, folder, dtype)
    layers_name, layers = _decoder_layers(model, job.blocks)
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
        stats = _calibrate(
            model, job, layers, groups, checkpoint, loader, requires, propagation, kept_so_far, progress
        )
    plan = decide(job, model.config, stats, None, {"config": config, "seed": config.seed}, time.perf_counter() - start)
    if kept_so_far:  # pruned-prefix propagation already decided every layer
        for block_plan in plan.blocks:
            block_plan.kept = kept_so_far[block_plan.name]
    check_same_count(get_adapter(model), [b.num_kept for b in plan.blocks])
    _load_compact(model, plan, layers, groups, checkpoint, loader, progress)
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
    from .saving import attach_plan

    plan.parameters = {"before": params_before, "after": sum(p.numel() for p in model.parameters())}
    plan.calibration["streaming"] = {
        "propagation": propagation,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    attach_plan(model, plan)
    return model


def _capture_layer_inputs(model, layers: nn.ModuleList, rows: torch.Tensor, batch_size: int):
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


def _calibrate(model, job, layers, groups, checkpoint, loader, requires, propagation, kept_so_far, progress):
    from .api import statistics_needed

    config = job.config
    captured = _capture_layer_inputs(model, layers, job.rows, config.batch_size)
    hidden = [_hidden_of(*batch[0]) for batch in captured]
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
        observers = [ExpertObserver(block, requires) for block in by_layer.get(i, [])]
        for observer in observers:
            observer.attach()
        try:
            # oneDNN keeps per-weight state for every layer it has seen (measured: ~0.1 GB per bf16 layer that is never
            # freed), which would grow with depth here where each layer's weights are new; the plain kernels do not.
            with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
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
                decided[block.name] = select_experts(scores, counts[block.name], block.groups[0])
            kept_so_far.update(decided)
            with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), mask_experts(by_layer[i], decided):
                outputs = [_run_layer(layer, h, *captured[b][i]) for b, h in enumerate(hidden)]
        hidden = outputs
        _release(layer)
        bar.set_postfix(peak_memory(), refresh=False)
    return stats


def _load_compact(model, plan: PrunePlan, layers, groups, checkpoint, loader, progress) -> None:
    """Read only the kept experts' tensors into the model, shrunk to the plan first."""
    from .neurons import narrow_experts

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
                match = _EXPERT_INDEX.search(key)
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
                    value = _KeptRows(value, kept, axes[runtime], block.num_experts, block.trailing_rows)
                break
            if value is not None:
                subset[key] = value
        for block in per_layer.get(i, []):
            slice_block(block, list(range(plans[block.name].num_kept)))  # shapes only: the skeleton is meta
        loader.load(model, subset)
        _trim()
        for block in per_layer.get(i, []):
            if plans[block.name].neurons:
                narrow_experts(block, plans[block.name].kept, plans[block.name].neurons)
        bar.set_postfix(peak_memory(), refresh=False)
