"""Reading a checkpoint piece by piece for streaming: safetensors files through pread, one layer's tensors through
transformers' own loader, and only the kept rows of expert tensors."""

from __future__ import annotations

import ctypes
import glob
import inspect
import json
import os
import re
from typing import Any

import torch
from torch import nn

EXPERT_INDEX = re.compile(r"(?<=experts\.)(\d+)(?=\.)")


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
            raise ValueError(
                f"{folder} holds no .safetensors files: streaming reads safetensors checkpoints. Convert it with "
                "save_pretrained, or prune after loading (streaming=False)."
            )
        self.handles = [_open(safe_open, file) for file in files]
        self.keys = {key: handle for handle in self.handles for key in handle.keys()}

    def slice(self, key: str):
        return self.keys[key].get_slice(key)


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
