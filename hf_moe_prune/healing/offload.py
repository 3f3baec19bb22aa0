"""Healing a model that accelerate offloads (`device_map` with `"disk"` or CPU offload): the offloaded weights that
train live in accelerate's offload store, on the CPU, for the duration of healing.

An offloaded module's parameters are meta tensors; before each forward accelerate's hook (`AlignDevicesHook` with
`offload=True`) builds new ones on the execution device from its weights map and drops them afterwards, so a gradient
would reach a tensor that no longer exists and an optimizer step would be lost at the next forward. For every hook
that holds a trained parameter, `offloaded_training`:

- takes the hook's tensors from its weights map (the store's CPU copy; a disk-offloaded tensor is read into memory:
  the trained modules are held in memory while healing, the others keep streaming),
- puts them in the module as real CPU parameters and turns that hook's offloading off; where the hook computes on
  another device (a GPU with CPU offload), each parameter reaches the forward through a parametrization that copies
  it there (`x.to(device)`, differentiable), so the trained tensor, its gradient and the optimizer state stay on the
  CPU and only the forward's copy takes device memory,
- afterwards writes the trained tensors into the store (which accelerate reads before its files, as pruning an
  offloaded block does: `hf_moe_prune.reshape.offload`), makes them meta again and turns the offloading back on.

The rest of the model is untouched: modules that do not train keep streaming through their hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from hf_moe_prune.reshape.offload import offload_hooks, offload_store

LORA_OFFLOADED = (
    "healing with `lora` wraps the trained modules in peft adapters, which accelerate's offloading hooks cannot "
    "follow (device_map offloads part of this model to the CPU or disk): heal the weights (drop `lora`; offloaded "
    "weights train in the offload store), or load the model on one device."
)


def will_offload(device_map: Any) -> bool:
    """Whether a `from_pretrained` device map offloads: a `"disk"` entry, or `"cpu"` beside an accelerator (a string
    such as `"auto"` is resolved later; `heal` checks the hooks themselves then)."""
    if not isinstance(device_map, dict):
        return False
    places = {str(v) for v in device_map.values()}
    return "disk" in places or ("cpu" in places and bool(places - {"cpu", "disk"}))


class _OnDevice(nn.Module):
    """A parametrization moving the (CPU) trained tensor to the hook's execution device, differentiably."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)


def _needs_copy(device: torch.device) -> bool:
    """Whether a trained CPU tensor reaches the forward through a parametrization copying it to `device`."""
    return device.type != "cpu"


def _managed(module: nn.Module, hook) -> list[tuple[str, torch.Tensor]]:
    from accelerate.utils import named_module_tensors

    return list(
        named_module_tensors(
            module, include_buffers=hook.offload_buffers, recurse=hook.place_submodules, remove_non_persistent=True
        )
    )


def offloaded_hooks(model: nn.Module, roots: list[nn.Module]) -> list[tuple[nn.Module, object]]:
    """The offloading hooks (with their modules) that hold a tensor of a module under `roots`."""
    wanted = {id(m) for root in roots for m in root.modules()}
    found = []
    for module in model.modules():
        for hook in offload_hooks(module):
            managed = module.modules() if hook.place_submodules else [module]
            if any(id(m) in wanted for m in managed):
                found.append((module, hook))
    return found


def check_store(model: nn.Module, roots: list[nn.Module]) -> None:
    """Refuse, before calibration, offload stores healing cannot write its trained tensors into.

    Raises:
        `ValueError`: a hook's weights map has no in-memory state dict (accelerate's `OffloadedWeightsLoader` and
            plain dicts have one).
    """
    for module, hook in offloaded_hooks(model, roots):
        if offload_store(hook) is None:
            name = next((n for n, m in model.named_modules() if m is module), "a module")
            raise ValueError(
                f"healing trains {name or 'the model'}, which accelerate offloads to a store hf_moe_prune cannot "
                "update; offload it with from_pretrained(device_map=..., offload_folder=...) or load it on one device."
            )


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attr


@contextlib.contextmanager
def offloaded_training(model: nn.Module, roots: list[nn.Module]) -> Iterator[int]:
    """Within the context the offloaded tensors of the hooks holding `roots`' parameters are real, trainable CPU
    tensors (on their execution device through a parametrization where it is not the CPU); afterwards they are
    written into the offload store and offloaded again. Yields how many tensors were brought in (0: nothing under
    `roots` is offloaded, the context does nothing)."""
    records = []
    try:
        for module, hook in offloaded_hooks(model, roots):
            store = offload_store(hook)
            if store is None:  # check_store refused it before calibration; a model changed since is refused here
                raise ValueError("healing: an offloaded module's store cannot be updated (see check_store).")
            state, prefix = store
            device = torch.device(hook.execution_device if hook.execution_device is not None else "cpu")
            brought = []
            for name, tensor in _managed(module, hook):
                if tensor.device.type != "meta":
                    continue
                owner, attr = _owner(module, name)
                value = hook.weights_map[name].to("cpu")
                if attr in owner._parameters:
                    owner._parameters[attr] = nn.Parameter(value, requires_grad=tensor.requires_grad)
                    if _needs_copy(device):
                        parametrize.register_parametrization(owner, attr, _OnDevice(device), unsafe=True)
                else:
                    owner._buffers[attr] = value.to(device)
                brought.append((owner, attr, prefix + name, tensor.requires_grad))
            hook.offload = False
            records.append((hook, brought))
        yield sum(len(brought) for _, brought in records)
    finally:
        for hook, brought in records:
            state, _ = offload_store(hook)
            for owner, attr, key, requires_grad in brought:
                if parametrize.is_parametrized(owner, attr):
                    parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
                tensor = getattr(owner, attr)
                state[key] = tensor.detach().to("cpu")
                meta = torch.empty_like(tensor, device="meta")
                if attr in owner._parameters:
                    owner._parameters[attr] = nn.Parameter(meta, requires_grad=requires_grad)
                else:
                    owner._buffers[attr] = meta
            hook.offload = True
