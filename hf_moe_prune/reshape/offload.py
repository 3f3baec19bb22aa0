"""Pruning blocks whose weights accelerate offloaded (`device_map` with `"disk"` or CPU offload).

An offloaded module's parameters are meta tensors; accelerate's hook copies the real ones in from its weights map
before each forward. Slicing must therefore read them from that map and write the sliced ones back into it, or the
hook would bring the unpruned tensors back at the next forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def offload_hooks(module: nn.Module) -> list:
    """The accelerate hooks on `module` that offload (inside a `SequentialHook` too)."""
    hook = getattr(module, "_hf_hook", None)
    return [h for h in getattr(hook, "hooks", None) or [hook] if getattr(h, "offload", False)]


def offload_store(hook) -> tuple[dict, str] | None:
    """The in-memory dict `hook`'s weights map reads before its files, and the prefix of the hook's keys in it; None
    for a store that cannot take tensors."""
    weights_map = hook.weights_map
    dataset = getattr(weights_map, "dataset", weights_map)
    state = getattr(dataset, "state_dict", dataset)
    return (state, getattr(weights_map, "prefix", "")) if isinstance(state, dict) else None


def _offload_hook(model: nn.Module, name: str):
    """The accelerate hook holding tensor `name` of `model` in its weights map, and the tensor's key there."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:i])
        for candidate in offload_hooks(model.get_submodule(prefix) if prefix else model):
            if getattr(candidate, "weights_map", None) is not None:
                return candidate, ".".join(parts[i:])
    return None, None


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=module._parameters[name].requires_grad)
    else:
        module._buffers[name] = value


@contextlib.contextmanager
def onloaded(model: nn.Module, module: nn.Module, allow_new_tensors: bool = False) -> Iterator[bool]:
    """Within the context, `module`'s offloaded tensors are real (CPU); afterwards whatever they became (e.g. sliced)
    is written back into the offload store and they are meta again. Yields whether anything was offloaded.

    Raises:
        `ValueError`: the offload store cannot take new tensors, or the module's tensors were renamed inside.
    """
    prefix = next(name for name, m in model.named_modules() if m is module)
    records = []
    for owner_name, owner in module.named_modules():
        for name, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is None or tensor.device.type != "meta":
                continue
            full = ".".join(p for p in (prefix, owner_name, name) if p)
            hook, key = _offload_hook(model, full)
            if hook is None:
                continue
            store = offload_store(hook)
            if store is None:
                raise ValueError(
                    f"{full} is offloaded to a store hf_moe_prune cannot update; offload to the CPU instead or prune "
                    "with streaming=True."
                )
            _set(owner, name, hook.weights_map[key].to("cpu"))
            records.append((owner, name, store[0], store[1] + key))
    yield bool(records)
    for owner, name, store, key in records:
        tensor = getattr(owner, name, None)
        if not isinstance(tensor, torch.Tensor):
            if allow_new_tensors:
                continue
            raise ValueError(f"{key} disappeared while pruning an offloaded block; this layout cannot be offloaded.")
        store[key] = tensor.detach()  # the store is consulted before the files
        _set(owner, name, torch.empty_like(tensor, device="meta"))
