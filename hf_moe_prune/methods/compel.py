"""COMPEL: Compensated MoE Pruning with Expert-Layer distribution (Yoon & Choi, Findings of ACL 2026).

Only the abstract is public, so this is the documented reading of `methods.md` §3:

- Paper: expert importance from Fisher information; layer importance from layer-wise outlier distributions;
  Fisher-guided compensation of the kept experts. Here: `method="compel"` defaults to `allocation="outlier"` and
  `compensation="fisher"` (see `hf_moe_prune.allocation.outlier_allocation` and
  `hf_moe_prune.compensation.fisher_compensation`).
- Expert score (ours where the paper is silent): the empirical Fisher `F_j = Σ_batches ||∂L/∂θ_j||²` of the LM loss
  on the calibration rows (one backward per batch of `batch_size` rows), summed over the expert's parameters.
- Router gradient path (ours): unrouted experts get no gradient from a top-k forward. During the Fisher pass each
  block's routed output becomes `y + (y_soft − stopgrad(y_soft))`, with `y_soft = Σ_{j ∉ top-k(x)} p_j(x) f_j(x)`
  (p the router softmax over all experts, x detached): the forward value and the routed experts' gradients are the
  model's own, and every unrouted expert receives the gradient it would get under dense soft routing.
  `method_kwargs={"router_path": False}` turns this off. The surrogate runs every expert on every token (E/k times
  the MoE compute of the pass).
- Memory: gradients are kept only for the expert tensors (every other parameter is frozen for the pass) and the
  model is never copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_moe_prune.calibration.hooks import wrap_experts
from hf_moe_prune.methods.base import register_method


def _patch_soft_path(block):
    num = block.num_experts

    def make(original):
        def forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs):
            out = original(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
            x = hidden_states.detach()
            probs = torch.softmax(F.linear(x, block.router_weight.detach()).float(), dim=-1)
            probs = probs.scatter(1, top_k_index.clamp(max=num - 1), 0.0)
            index = torch.arange(num, device=x.device).expand(len(x), num)
            soft = original(x, index, probs.to(top_k_weights.dtype), *args, **kwargs)
            return out + (soft - soft.detach())

        return forward

    return wrap_experts(block, make)


def compel_fit(model, blocks, rows, config, progress: bool = True) -> dict[str, torch.Tensor]:
    """Empirical Fisher of every routed expert's parameters (see the module docstring)."""
    from hf_moe_prune.calibration.runner import model_device, model_inputs

    options = config.method_kwargs
    router_path = bool(options.get("router_path", True))
    saved = {p: p.requires_grad for p in model.parameters()}
    # (parameter, expert): a fused [E, ...] tensor (expert None), or a tensor of one per-expert module (Switch)
    expert_params = {b.name: [(p, e) for _, p, e in b.expert_weights()] for b in blocks}
    if any(p.device.type == "meta" for params in expert_params.values() for p, _ in params):
        raise ValueError(
            "compel needs gradients on the expert weights, which accelerate offloads (device_map with 'disk' or CPU "
            "offload) and brings in only during each forward. Load the model on devices that hold it, or use a "
            "forward-statistics method (reap, ean, ...) or diep, which learns its own masks."
        )
    fisher = {b.name: torch.zeros(b.num_experts, dtype=torch.float64) for b in blocks}
    patched = []
    was_training = model.training
    device = model_device(model)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for params in expert_params.values():
            for p, _ in params:
                p.requires_grad_(True)
        if router_path:
            for b in blocks:
                if b.adapter.routing == "experts_call":
                    patched.append(_patch_soft_path(b))
        model.eval()
        batches = range(0, len(rows), config.batch_size)
        for start in tqdm(batches, desc="compel fisher", unit="batch", disable=not progress):
            ids = rows[start : start + config.batch_size].to(device)
            loss = model(**model_inputs(model, ids), labels=ids, use_cache=False).loss
            loss.backward()
            for name, params in expert_params.items():
                for p, expert in params:
                    if p.grad is not None:
                        squares = p.grad.detach().double().pow(2)
                        if expert is None:
                            fisher[name] += squares.flatten(1).sum(1).cpu()
                        else:
                            fisher[name][expert] += squares.sum().cpu()
                        p.grad = None
    finally:
        for restore in patched:
            restore()
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    n = max(1, len(range(0, len(rows), config.batch_size)))
    return {k: v / n for k, v in fisher.items()}


@register_method(
    "compel",
    requires=("count", "gate_sum"),
    reference="Yoon & Choi, Findings of ACL 2026 (our reading of the abstract)",
    fit=compel_fit,
    default_allocation="outlier",
    default_compensation="fisher",
    options={"router_path": bool},
)
def compel(stats, generator=None, **kwargs):
    """Scores come from `compel_fit`; the statistics (soft counts) serve the compensation step."""
    return stats["gate_sum"]
