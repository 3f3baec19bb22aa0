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


def wrap_experts(block, make: Callable[[Callable], Callable]) -> Callable[[], None]:
    """`wrap_forward` on a MoE block's experts module, where `make` always sees and calls the experts in the standard
    form `forward(hidden, top_k_index, top_k_weights, ...)`: for families that call their experts with a dispatch
    mask (Switch Transformers), the call is translated both ways (`MoEBlock.to_top_k`/`from_top_k`)."""
    if not block.adapter.dispatch_mask:
        return wrap_forward(block.experts, make)

    def translated(original):
        def standard(hidden, top_k_index, top_k_weights, *args, **kwargs):
            return original(hidden, *block.from_top_k(top_k_index, top_k_weights), *args, **kwargs)

        inner = make(standard)

        def forward(hidden, dispatch, weights, *args, **kwargs):
            return inner(hidden, *block.to_top_k(dispatch, weights), *args, **kwargs)

        return forward

    return wrap_forward(block.experts, translated)
