"""Masking experts in the router instead of slicing them: the same outputs as a sliced model, reversibly (used to
judge candidate plans and to check slicing)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hf_moe_prune.adapters import MoEBlock
from hf_moe_prune.reshape.slicing import tensor_owner


class MaskRouterLogits(TorchFunctionMode):
    """Adds a 0/-inf mask to the output of every `F.linear` whose weight is a masked router's weight.

    Intercepting the logits where the router computes them leaves everything after them (softmax or sigmoid, router
    bias, score-correction bias, expert groups, renormalization, scaling) to the model's own code. The weight is
    recognised by identity (a reference is kept, so its `id` cannot be reused by another tensor), or, while a masked
    router runs (`active`), by its shape: accelerate's offloading hook gives the router a new weight every forward.
    """

    def __init__(self, masks: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.masks = masks
        self.active: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            entry = self.masks.get(id(weight))
            mask = entry[0] if entry is not None and entry[1] is weight else None
            if mask is None and self.active and weight is not None and weight.shape[0] == self.active[-1].numel():
                mask = self.active[-1]
            if mask is not None:
                out = out + mask.to(device=out.device, dtype=out.dtype)
        return out


def _enter(mode: MaskRouterLogits, mask: torch.Tensor, *_) -> None:
    mode.active.append(mask)  # hooks must return None: anything else would replace the router's inputs


def _leave(mode: MaskRouterLogits, *_) -> None:
    mode.active.pop()  # ... or its output


def selection_biases(block: MoEBlock) -> list[tuple[torch.Tensor, int]]:
    """The block's selection-only biases (score correction, expert bias) with their expert dimension.

    The router's own linear bias is not one of them: it already comes out of the router's `F.linear`.
    """
    linear_bias = f"{block.adapter.router}.{block.adapter.router_weight.rpartition('.')[0]}".rstrip(".")
    found = []
    for path, dim in block.adapter.expert_tensors():
        owner = tensor_owner(block, path)
        if owner is not None and "bias" in owner[1] and path != f"{linear_bias}.bias":
            found.append((getattr(*owner), dim))
    return found


@contextlib.contextmanager
def offset_router_logits(blocks: list[MoEBlock], offsets: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the context, add `offsets[block.name]` (one entry per routed expert) to the block's router logits.

    The offset goes in where the router computes its logits (before any softmax, top-k or group selection: offsetting
    afterwards would leave softmax denominators wrong) and, without gradient, onto the block's selection-only biases,
    so that no selection rule escapes it. Trailing non-routed classes (shared/zero experts, a skip class) get 0. An
    offset of -inf removes an expert (`mask_experts`); `log m` of a soft keep mask `m` lets gradients reach `m`
    (DiEP's relaxed routing), since the offset is added, not copied.
    """
    entries, router_offsets, saved, handles = {}, [], [], []
    try:
        for block in blocks:
            if block.name not in offsets:
                continue
            offset = offsets[block.name]
            if block.trailing_rows:
                offset = torch.cat([offset, offset.new_zeros(block.trailing_rows)])
            entries[id(block.router_weight)] = (offset, block.router_weight)
            router_offsets.append((block.router, offset))
            for tensor, dim in selection_biases(block):
                saved.append((tensor, tensor.detach().clone()))
                shape = [1] * tensor.dim()
                shape[dim] = -1
                # E + T entries with the trailing classes (Zaya's balancing biases), else E
                with torch.no_grad():
                    tensor.add_(offset.detach()[: tensor.shape[dim]].to(tensor).view(shape))
        mode = MaskRouterLogits(entries)
        for router, offset in router_offsets:
            handles.append(router.register_forward_pre_hook(functools.partial(_enter, mode, offset)))
            handles.append(router.register_forward_hook(functools.partial(_leave, mode)))
        with mode:
            yield
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)


def mask_experts(blocks: list[MoEBlock], kept: dict[str, list[int]]) -> contextlib.AbstractContextManager[None]:
    """Within the context, route as if only `kept[block.name]` experts existed.

    The other experts' router logits are set to -inf where the router computes them and their selection biases too
    (see `offset_router_logits`), so no selection rule can pick them. The masked model is what slicing must reproduce
    exactly; it is also a cheap way to try a plan without changing the model.
    """
    offsets = {}
    for block in blocks:
        if block.name in kept:
            offset = torch.full((block.num_experts,), float("-inf"))
            offset[torch.as_tensor(kept[block.name], dtype=torch.long)] = 0.0
            offsets[block.name] = offset
    return offset_router_logits(blocks, offsets)
