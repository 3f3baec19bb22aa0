"""Reading a checkpoint piece by piece for streaming: safetensors files through pread, one layer's tensors through
transformers' own loader, and only the kept rows of expert tensors."""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import inspect
import json
import os
import re
from typing import Any

import torch
from torch import nn

EXPERT_INDEX = re.compile(r"(?<=experts\.)(\d+)(?=\.)")
SERIAL_LOAD = "HF_DEACTIVATE_ASYNC_LOAD"  # transformers reads it on every load


class StreamingRefused(ValueError):
    """The request cannot stream (the reason says why and what to do); raised before any weight is read, so
    `from_pretrained` with `streaming=None` falls back to loading the whole model. A checkpoint that is broken
    (tensors that do not fit its config) raises a plain `ValueError` instead: a full load would fail on it too."""


class KeptRows:
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


class Checkpoint:
    """The safetensors files of a checkpoint, opened lazily (nothing is read until a slice is)."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted({os.path.join(folder, name) for name in json.load(f)["weight_map"].values()})
        if not files:
            raise StreamingRefused(
                f"{folder} holds no .safetensors files: streaming reads safetensors checkpoints. Convert it with "
                "save_pretrained, or prune after loading (streaming=False)."
            )
        self.handles = [_open(safe_open, file) for file in files]
        self.keys = {key: handle for handle in self.handles for key in handle.keys()}

    def slice(self, key: str):
        return self.keys[key].get_slice(key)


class HeaderTensor:
    """A checkpoint tensor as its safetensors header describes it: it materializes as an empty meta tensor of that
    shape, so transformers' loader can convert (merge, split, transpose) shapes without reading any data."""

    def __init__(self, source):
        self.shape = tuple(source.get_shape())

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def __getitem__(self, item):
        return torch.empty(self.shape, device="meta")


class Loader:
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

    def load(self, model: nn.Module, state_dict: dict[str, Any], device: str | None = None):
        """Load `state_dict` (checkpoint keys) into `model`; return transformers' loading info (missing, mismatched
        and unexpected keys, conversion errors) where this version returns it, else None."""
        from transformers.utils import logging

        if not state_dict:
            return None
        config = self.config if device is None else dataclasses.replace(self.config, device_map={"": device})
        enabled = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # one "Loading weights" bar per layer would drown ours
        # Read in this thread: the loader's worker threads (a new pool per call) each leave a 64 MB malloc arena of
        # address space behind, which counts against a data limit although little of it stays resident (measured:
        # 0.25 GB less address space, peak RSS 0.14 GB lower, same time, for one layer at a time).
        serial = os.environ.get(SERIAL_LOAD)
        os.environ[SERIAL_LOAD] = "1"
        try:
            result = self._load(model=model, state_dict=state_dict, load_config=config, **self._extra)
        finally:
            if serial is None:
                os.environ.pop(SERIAL_LOAD, None)
            else:
                os.environ[SERIAL_LOAD] = serial
            if enabled:
                logging.enable_progress_bar()
        info = result[0] if isinstance(result, tuple) else result
        info = info if hasattr(info, "missing_keys") else None
        if device is None and info is not None and info.conversion_errors:
            # transformers logs a failed conversion (a MemoryError included) and leaves the parameter empty; here
            # that would surface much later as a meta tensor in a kernel or as "lacks weights"
            name, error = next(iter(info.conversion_errors.items()))
            raise RuntimeError(f"Loading {name} from the checkpoint failed: {_short(error)}")
        return info


def _short(error: str) -> str:
    """The last lines of a conversion error transformers recorded (it starts with the whole traceback)."""
    return " ".join(str(error).strip().splitlines()[-2:])


def _natural(name: str) -> list:
    """Sort key putting layer 2 before layer 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_against_config(model: nn.Module, checkpoint: Checkpoint, loader: Loader, path: str) -> None:
    """Refuse a checkpoint whose tensors do not fit the model its config builds, before any weight is read.

    transformers' loader runs on the safetensors header shapes alone (meta tensors): its renamings and conversions
    apply as in a real load, and it reports the parameters that would stay unloaded or get a tensor of the wrong shape.
    The skeleton's parameters are put back afterwards.

    Raises:
        `ValueError`: naming the tensor, the checkpoint's and the config's shapes (or the missing tensors) and the fix.
    """
    saved = [(module, name, param) for module in model.modules() for name, param in module._parameters.items()]
    try:
        info = loader.load(model, {key: HeaderTensor(checkpoint.slice(key)) for key in checkpoint.keys}, device="meta")
    finally:
        for module, name, param in saved:
            module._parameters[name] = param
    if info is None:  # a transformers version that does not report: the checks after loading still apply
        return
    if info.mismatched_keys:
        name, loaded, expected = min(info.mismatched_keys, key=lambda item: _natural(item[0]))
        sources = [key for key in checkpoint.keys if loader.runtime_key(key)[0] == name]
        source = f"its tensors for {name} load as {list(loaded)}"
        if sources:
            source = f"its tensor {sources[0]} (shape {list(checkpoint.slice(sources[0]).get_shape())})"
            source += f" and {len(sources) - 1} more merge into" if len(sources) > 1 else " loads as"
            source += f" {list(loaded)}"
        more = len(info.mismatched_keys) - 1
        raise ValueError(
            f"The checkpoint at {path} does not fit the model its config.json builds: {name} needs shape "
            f"{list(expected)}, but {source}"
            + (f"; {more} more tensors disagree" if more else "")
            + ". Either tensors are missing from the checkpoint (an incomplete download or shard: download or save "
            "it again) or config.json describes other weights (an edited expert count, a config from another "
            "checkpoint): use the config.json saved with these weights."
        )
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    parameters = {name for name, _ in model.named_parameters()}
    missing = sorted(key for key in info.missing_keys if key in parameters and key not in tied)
    if missing or info.conversion_errors:
        names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        what = f"lacks tensors the model needs ({len(missing)}: {names})"
        if info.conversion_errors:
            name, error = next(iter(info.conversion_errors.items()))
            what = f"has tensors that cannot be converted into {name} ({_short(error)})"
        raise ValueError(
            f"The checkpoint at {path} {what}: a shard is missing or incomplete, or config.json does not describe "
            "these weights. Download or save the checkpoint again (all model-*.safetensors files listed in "
            "model.safetensors.index.json)."
        )


def release(module: nn.Module) -> None:
    """Give the memory of `module`'s parameters back (they become meta again); buffers stay."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type != "meta":
                sub._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
    trim()


def trim() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the next layer's tensors may not fit in
    the holes), so the process's memory follows what is alive."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
