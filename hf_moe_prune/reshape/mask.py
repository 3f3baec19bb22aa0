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


@contextlib.contextmanager
def mask_experts(blocks: list[MoEBlock], kept: dict[str, list[int]]) -> Iterator[None]:
    """Within the context, route as if only `kept[block.name]` experts existed.

    The other experts' router logits are set to -inf where the router computes them (before any softmax, top-k or
    group selection: masking afterwards would leave softmax denominators wrong), and their score-correction biases
    to -inf, so no selection rule can pick them. The masked model is what slicing must reproduce exactly; it is also
    a cheap way to try a plan without changing the model.
    """
    masks, saved, router_masks, handles = {}, [], [], []
    try:
        for block in blocks:
            if block.name not in kept:
                continue
            num_experts, trailing = block.num_experts, block.trailing_rows
            # Trailing non-routed classes (shared/zero experts, a skip class) follow the experts, never masked.
            dropped = torch.zeros(num_experts + trailing, dtype=torch.bool)
            dropped[:num_experts] = True
            dropped[torch.as_tensor(kept[block.name], dtype=torch.long)] = False
            mask = torch.zeros(num_experts + trailing).masked_fill(dropped, float("-inf"))
            masks[id(block.router_weight)] = (mask, block.router_weight)
            router_masks.append((block.router, mask))
            linear_bias = f"{block.adapter.router}.{block.adapter.router_weight.rpartition('.')[0]}".rstrip(".")
            for path, dim in block.adapter.expert_tensors():
                owner = tensor_owner(block, path)
                # Selection biases (score correction, expert bias) go to -inf too; the router's own linear bias
                # already comes out of the masked F.linear.
                if owner is None or "bias" not in owner[1] or path == f"{linear_bias}.bias":
                    continue
                tensor = getattr(*owner)
                saved.append((tensor, tensor.detach().clone()))
                with torch.no_grad():
                    shape = [1] * tensor.dim()
                    shape[dim] = -1
                    # E + T entries with the trailing classes (Zaya's balancing biases), else E
                    fill = dropped if tensor.shape[dim] == num_experts + trailing else dropped[:num_experts]
                    tensor.masked_fill_(fill.to(tensor.device).view(shape), float("-inf"))
        mode = MaskRouterLogits(masks)
        for router, mask in router_masks:
            handles.append(router.register_forward_pre_hook(functools.partial(_enter, mode, mask)))
            handles.append(router.register_forward_hook(functools.partial(_leave, mode)))
        with mode:
            yield
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
