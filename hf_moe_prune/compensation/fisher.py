"""`fisher`: COMPEL's Fisher-guided compensation of the kept experts (our reading, see `fisher_compensation`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_moe_prune.registries import register_compensation


def _routed(block, hidden: torch.Tensor, kept: list[int] | None):
    """Run the block on `hidden` (optionally routed to `kept` only) and return the experts' (input, index, weights,
    output): the routed part of the block, without any shared expert."""
    from hf_moe_prune.reshape import mask_experts

    captured = {}

    def hook(module, args, kwargs, output):
        h = args[0]
        idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
        w = args[2] if len(args) > 2 else kwargs["top_k_weights"]
        idx, w = block.to_top_k(idx, w)
        captured.update(h=h.detach(), idx=idx.detach(), w=w.detach(), out=output.detach())

    handle = block.experts.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            if kept is None:
                block.module(hidden.unsqueeze(0))
            else:
                with mask_experts([block], {block.name: kept}):
                    block.module(hidden.unsqueeze(0))
    finally:
        handle.remove()
    return captured["h"], captured["idx"], captured["w"], captured["out"]


def _features(experts, j: int, h: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(h, experts.gate_up_proj[j]).chunk(2, dim=-1)
    return experts.act_fn(gate) * up


def reconstruction_error(block, kept: list[int], inputs: torch.Tensor, target: torch.Tensor | None = None) -> float:
    """Mean squared error of the block's routed output with only `kept` experts against `target` (by default the
    unpruned block's routed output) on `inputs`."""
    if target is None:
        target = _routed(block, inputs, None)[3]
    out = _routed(block, inputs, kept)[3]
    return float((out.float() - target.float()).pow(2).mean())


def _check_fused(block) -> None:
    if not all(hasattr(block.experts, n) for n in ("gate_up_proj", "down_proj", "act_fn")):
        raise ValueError(
            f"fisher compensation needs fused gate_up_proj/down_proj experts; {block.name} "
            f"({block.adapter.model_type}) has none. Use compensation='none' or 'merge'."
        )


@register_compensation("fisher", needs_inputs=True, check=_check_fused, touches=("down_proj",))
@torch.no_grad()
def fisher_compensation(block, kept, context=None) -> None:
    """COMPEL's Fisher-guided weight compensation, as we read it (the paper gives only the abstract).

    Objective (methods.md §3(d)): change the kept experts so that the block's routed output on calibration tokens,
    with the pruned experts' router logits at −inf (exactly what slicing gives), reconstructs the unpruned output:
    `min_Δ ||Σ_{j∈K} g'_j f_j(h; θ_j + Δ_j) − y(h)||² + damping`. Ours: only `down_proj` moves (routing and the
    intermediate activations a_j stay fixed, so the problem is quadratic), and each step is a natural-gradient /
    Newton step preconditioned by the per-expert Fisher information of the reconstruction (Gaussian output model:
    `F_j = Σ_t g_j(t)² a_j(t) a_j(t)ᵀ`, block-diagonal over experts, Levenberg damping `λ·mean diag F_j`), followed
    by an exact line search along the step, so the error never increases. A few such block-Jacobi sweeps
    (`options["steps"]`, default 3) are run. Needs the experts' fused `gate_up_proj`/`down_proj` layout.
    """
    if context is None or context.inputs is None or len(kept) == block.num_experts:
        return
    _check_fused(block)
    experts = block.experts
    steps = int(context.options.get("steps", 3))
    damping = float(context.options.get("damping", 1e-2))
    inputs = context.inputs.to(experts.down_proj.device, experts.down_proj.dtype)
    target = _routed(block, inputs, None)[3].double()
    h, idx, w, out = _routed(block, inputs, kept)
    feats = {}
    for j in kept:
        tok, slot = torch.where(idx == j)
        if len(tok):
            feats[j] = (tok, (_features(experts, j, h[tok]).double() * w[tok, slot].double().unsqueeze(-1)))
    if not feats:
        return
    residual = target - out.double()
    for _ in range(steps):
        deltas, update = {}, torch.zeros_like(residual)
        for j, (tok, phi) in feats.items():
            fisher = phi.T @ phi
            eye = torch.eye(len(fisher), dtype=fisher.dtype, device=fisher.device)
            fisher += damping * fisher.diagonal().mean().clamp(min=1e-12) * eye
            delta = torch.linalg.solve(fisher, phi.T @ residual[tok]).T  # [H, I], like down_proj[j]
            deltas[j] = delta
            update.index_add_(0, tok, phi @ delta.T)
        denom = float(update.pow(2).sum())
        if denom <= 0:
            break
        scale = max(0.0, min(1.0, float((residual * update).sum()) / denom))  # exact line search, clipped
        if scale == 0.0:
            break
        for j, delta in deltas.items():
            experts.down_proj.data[j] += (scale * delta).to(experts.down_proj.dtype)
        residual -= scale * update
