"""Which parameters healing trains, and the optimizer over them (fp32 state for low-precision weights)."""

from __future__ import annotations

import torch

from hf_moe_prune.adapters import find_blocks


def trainable_modules(model: torch.nn.Module, train: list[str]) -> list[torch.nn.Module]:
    """The modules whose parameters `train` names (`hf_moe_prune.healing_options.TRAINABLE`), each once, in module
    order; `[model]` for `all`.

    `experts`: the routed experts that remain; `routers`: the routers; `shared`: the family's shared experts; `all`:
    the whole model.
    """
    if "all" in train:
        return [model]
    chosen: dict[int, torch.nn.Module] = {}
    for block in find_blocks(model):
        modules = []
        if "experts" in train:
            modules += block.expert_modules
        if "routers" in train:
            modules.append(block.router)
        if "shared" in train:
            for name in block.adapter.shared:
                try:
                    modules.append(block.module.get_submodule(name))
                except AttributeError:
                    continue
        for module in modules:
            chosen.setdefault(id(module), module)
    return list(chosen.values())


def trainable_parameters(model: torch.nn.Module, train: list[str]) -> list[torch.nn.Parameter]:
    """The floating-point parameters of `trainable_modules(model, train)`, each once, in module order (a router's
    score-correction buffer is not trained: it balances load, it was never learned by gradient)."""
    chosen: dict[int, torch.nn.Parameter] = {}
    for module in trainable_modules(model, train):
        for param in module.parameters():
            if param.is_floating_point():
                chosen.setdefault(id(param), param)
    return list(chosen.values())


class MasterAdamW:
    """AdamW over `params`, with float32 master copies of the parameters that are not float32 (bf16/fp16 weights
    train in their dtype, their optimizer state and updates in float32)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float):
        self.params = params
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_() for p in params]
        self.optimizer = torch.optim.AdamW(self.masters, lr=lr, weight_decay=weight_decay)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, max_grad_norm: float) -> float:
        """Clip, step and copy the masters back; returns the gradient norm before clipping."""
        for param, master in zip(self.params, self.masters, strict=True):
            if master is not param:
                master.grad = None if param.grad is None else param.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(self.masters, max_grad_norm if max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        with torch.no_grad():
            for param, master in zip(self.params, self.masters, strict=True):
                if master is not param:
                    param.copy_(master.to(param.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        for param in self.params:
            param.grad = None
        return float(norm)
