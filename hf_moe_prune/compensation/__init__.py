"""Compensation: adjust the kept experts after pruning so that the layer output changes least.

A compensator is `compensate(block, kept, context)`, called on the still unpruned block just before it is sliced.
`context` is a `CompensationContext`: the block's calibration statistics and, for compensators that declare
`needs_inputs = True`, a sample of the block's calibration inputs (collected only then, in one extra no-grad pass).

- `none`: leave the kept experts as they are.
- `merge`: fold each pruned expert into the kept expert whose router row is most similar (cosine), by usage-weighted
  averaging of the weights (usage = soft counts, i.e. the summed gates, else token counts, else equal).
- `fisher`: COMPEL's Fisher-guided compensation (our reading, see `fisher_compensation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..registries import COMPENSATIONS, register_compensation


@dataclass
class CompensationContext:
    """What a compensator may use for one block: statistics, calibration inputs `[tokens, hidden]`, options."""

    stats: object = None
    inputs: torch.Tensor | None = None
    options: dict = field(default_factory=dict)


def needs_inputs(name: str) -> bool:
    """Whether compensation `name` needs a sample of each block's calibration inputs."""
    return COMPENSATIONS.get(name).needs_inputs


def check_compensation(name: str, blocks) -> None:
    """Raise before any calibration when compensation `name` cannot run on one of `blocks` (its `check`)."""
    check = COMPENSATIONS.get(name).check
    for block in blocks if check is not None else ():
        check(block)


@register_compensation("none", changes_weights=False, units=("expert", "neuron"))
def no_compensation(block, kept, context=None) -> None:
    """Leave the kept experts as they are."""


def _usage(context, num_experts: int) -> torch.Tensor:
    stats = getattr(context, "stats", None)
    for name in ("gate_sum", "count"):
        if stats is not None and name in stats and float(stats[name].sum()) > 0:
            return stats[name].double()
    return torch.ones(num_experts, dtype=torch.float64)


@register_compensation("merge", reads_dropped=True)
@torch.no_grad()
def merge_compensation(block, kept, context=None) -> None:
    """Merge every pruned expert e into the kept expert r with the most similar router row (cosine similarity of
    router weights: the tokens e received are the ones a router row close to e's would attract), as
    `θ_r ← (u_r θ_r + Σ_e u_e θ_e) / (u_r + Σ_e u_e)` over every expert tensor, with u the usage (soft counts).
    Neurons are averaged in place, without permutation alignment (M-SMoE-style frequency-weighted merging minus the
    alignment). Router rows of kept experts are unchanged."""
    num = block.num_experts
    pruned = [e for e in range(num) if e not in set(kept)]
    if not pruned:
        return
    router = block.router_weight.detach().float()
    sim = F.normalize(router, dim=-1) @ F.normalize(router, dim=-1).T
    kept_t = torch.as_tensor(kept)
    target = {e: int(kept_t[sim[e, kept_t].argmax()]) for e in pruned}
    usage = _usage(context, num).clamp(min=1e-12)
    groups: dict[int, list[int]] = {r: [r] for r in kept}
    for e, r in target.items():
        groups[r].append(e)
    # Per expert, the tensors of each kind: rows of a fused [E, ...] tensor, or the same-named tensor of every
    # per-expert module (Switch Transformers' `expert_{i}.wi.weight`).
    kinds: dict[str, list[torch.Tensor]] = {}
    for name, param, expert in block.expert_weights():
        if expert is None:
            kinds[f"fused.{id(param)}"] = list(param.data.unbind(0))
        else:
            kinds.setdefault(name, [None] * num)[expert] = param.data
    for tensors in kinds.values():
        for r, members in groups.items():
            if len(members) == 1:
                continue
            w = usage[members].to(tensors[r].device, torch.float32)
            merged = sum(tensors[m].float() * (w[i] / w.sum()) for i, m in enumerate(members))
            tensors[r].copy_(merged.to(tensors[r].dtype))


def _routed(block, hidden: torch.Tensor, kept: list[int] | None):
    """Run the block on `hidden` (optionally routed to `kept` only) and return the experts' (input, index, weights,
    output): the routed part of the block, without any shared expert."""
    from ..reshape import mask_experts

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


@register_compensation("fisher", needs_inputs=True, check=_check_fused)
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




class BlockInputRecorder:
    """Samples at most `max_tokens` calibration inputs `[tokens, hidden]` of every block, and the L2 norm of each input
    channel over all calibration tokens (used by the `outlier` allocation), from the forwards it is attached to: the
    calibration runner attaches it beside the observers, so no second pass over the data is needed."""

    def __init__(self, blocks, num_rows: int, batch_size: int, max_tokens: int = 8192, seed: int = 0):
        self.blocks = blocks
        self.max_tokens = max_tokens
        self.per_batch = max(1, max_tokens // max(1, (num_rows + batch_size - 1) // batch_size))
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs: dict[str, list[torch.Tensor]] = {b.name: [] for b in blocks}
        self.squares: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            self.squares[name] = self.squares.get(name, 0) + x.float().pow(2).sum(0).cpu()
            pick = torch.randperm(len(x), generator=self.generator)[: self.per_batch]
            self.inputs[name].append(x[pick.to(x.device)].cpu())

        return hook

    def attach(self) -> None:
        self._handles = [b.module.register_forward_pre_hook(self._hook(b.name)) for b in self.blocks]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def result(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`(inputs, input_norms)` per block name."""
        inputs = {n: torch.cat(v)[: self.max_tokens] for n, v in self.inputs.items()}
        return inputs, {n: v.sqrt() for n, v in self.squares.items()}
