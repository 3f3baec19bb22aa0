"""Temporarily replacing a module's forward without losing accelerate's offloading hook."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def wrap_forward(module: nn.Module, make: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Set `module.forward = make(current forward)` and return a function that puts the previous one back.

    The current forward is the bound one: accelerate's offloading hook (an instance attribute that brings the weights
    in before calling the class forward) when the model was dispatched with a device map, the class forward otherwise.
    """
    saved = module.__dict__.get("forward")
    module.forward = make(module.forward)

    def restore() -> None:
        if saved is not None:
            module.forward = saved
        else:
            module.__dict__.pop("forward", None)

    return restore
