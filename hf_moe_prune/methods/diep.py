"""DiEP: Differentiable Expert Pruning (Bai et al., arXiv 2509.16105, NeurIPS 2025).

From the paper (abstract and secondary summaries, `methods.md` §4): learnable intra-layer expert scores α and
inter-layer scores β, optimized by alternating gradient descent on a small calibration set so that the discrete
non-uniform search becomes continuous; then a global discretization. Model weights are frozen.

Ours (the paper's code is not public):
- Soft keep mask `m_{l,j} = σ(α_{l,j} + β_l)`, initialised at σ(init) (default init 3, m ≈ 0.95).
- The relaxed forward both re-routes and scales: `log m` is added to the router logits where the router computes them
  (and, without gradient, to selection-only biases such as DeepSeek-V3's score correction), so small masks leave the
  top-k and m → 0 is exactly the masked routing that slicing reproduces; and each selected expert's gate is
  multiplied by m (so that β, which shifts a whole layer, changes the output at all: a uniform shift of the logits
  alone cancels in the softmax).
- Loss per step: `KL(p_full ‖ p_masked)` on the calibration tokens (teacher = the same model without masks, no copy)
  `+ λ_s (mean m − keep)² + λ_b mean m(1 − m)`; α-steps and β-steps alternate; Adam; a fixed number of steps.
- Discretization (the `learned` allocation): each layer keeps its expected count Σ_j m_{l,j}, scaled to the exact
  budget with the per-layer floors, and within the layer the experts with the highest m.

Why (measured on the four trained fixtures at ratio 0.5): the masks do not become binary. They descend from 0.95 to
the budget together, then the layers separate slowly: the relaxation is cheapest when a whole layer is scaled down
uniformly, which no pruning can express. Ranking such interior probabilities across layers turned small β
differences into all-or-floor counts: every fixture kept all or nearly all experts of its first MoE layer and cut
another to its floor or near it (qwen3_moe [16, 2, 6, 8], qwen2_moe [16, 2, 4, 10], olmoe [32, 10, 7, 15] at 66.6
perplexity against 64.2 for `reap` with the `global` allocation, deepseek_v3 [28, 12, 8]). The expected counts keep
the relaxation's layer preference in proportion (olmoe [23, 11, 13, 17], 61.5) and equal the ranking whenever the
masks are binary. The former early stop (loss not improved by 1e-3 for 15 steps) fired soon after the masks reached
the budget (about step 45; where exactly changed from run to run), before β had separated the layers, so the number
of steps is now fixed (200). Before this change the `log m` routing term was never applied (the logit mask was
handed to `MaskRouterLogits` in a form it does not read), so only the gate scale was learned.
`method_kwargs`: steps (200), lr (0.1), budget_weight (10), binary_weight (0.1), init (3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_moe_prune.calibration.hooks import wrap_experts
from hf_moe_prune.methods.base import register_method
from hf_moe_prune.reshape import offset_router_logits


def diep_fit(model, blocks, rows, config, progress: bool = True) -> dict[str, torch.Tensor]:
    from hf_moe_prune.calibration.runner import model_device, model_inputs

    opts = config.method_kwargs
    steps, lr = int(opts.get("steps", 200)), float(opts.get("lr", 0.1))
    budget_w, binary_w = float(opts.get("budget_weight", 10.0)), float(opts.get("binary_weight", 0.1))
    init = float(opts.get("init", 3.0))
    total = sum(b.num_experts for b in blocks)
    keep = (total - math.floor((config.ratio or 0.5) * total + 1e-9)) / total
    if config.num_experts_to_keep is not None:
        keep = sum(min(config.num_experts_to_keep, b.num_experts) for b in blocks) / total
    device = model_device(model)
    alpha = [torch.zeros(b.num_experts, device=device, requires_grad=True) for b in blocks]
    beta = torch.full((len(blocks),), init, device=device, requires_grad=True)
    opt_a, opt_b = torch.optim.Adam(alpha, lr=lr), torch.optim.Adam([beta], lr=lr)
    saved = {p: p.requires_grad for p in model.parameters()}
    masks_now: list[torch.Tensor] = []

    restores = []

    def patch(i, block):
        def make(original):
            def forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs):
                m = masks_now[i].to(top_k_weights.dtype)[top_k_index.clamp(max=block.num_experts - 1)]
                return original(hidden_states, top_k_index, top_k_weights * m, *args, **kwargs)

            return forward

        restores.append(wrap_experts(block, make))

    was_training = model.training
    batches = list(range(0, len(rows), config.batch_size))
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for i, b in enumerate(blocks):
            if b.adapter.routing == "experts_call":
                patch(i, b)
        model.eval()
        bar = tqdm(range(steps), desc="diep", unit="step", disable=not progress)
        for step in bar:
            ids = rows[batches[step % len(batches)] : batches[step % len(batches)] + config.batch_size].to(device)
            masks_now[:] = [torch.ones(b.num_experts, device=device) for b in blocks]
            with torch.no_grad():
                teacher = F.log_softmax(model(**model_inputs(model, ids), use_cache=False).logits.float(), dim=-1)
            masks = [torch.sigmoid(a + beta[i]) for i, a in enumerate(alpha)]
            masks_now[:] = masks
            # log m on the router logits: m -> 0 is exactly the masked routing that slicing reproduces
            log_masks = {b.name: torch.log(m.clamp(min=1e-6)) for b, m in zip(blocks, masks, strict=True)}
            with offset_router_logits(blocks, log_masks):
                student = F.log_softmax(model(**model_inputs(model, ids), use_cache=False).logits.float(), dim=-1)
            kl = F.kl_div(student.flatten(0, 1), teacher.flatten(0, 1), log_target=True, reduction="batchmean")
            flat = torch.cat(masks)
            loss = kl + budget_w * (flat.mean() - keep) ** 2 + binary_w * (flat * (1 - flat)).mean()
            opt = opt_a if step % 2 == 0 else opt_b
            opt_a.zero_grad()
            opt_b.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(
                loss=f"{float(loss.detach()):.4f}",
                kl=f"{float(kl.detach()):.4f}",
                keep=f"{float(flat.detach().mean()):.3f}",
            )
        with torch.no_grad():
            scores = [torch.sigmoid(a + beta[i]).double().cpu() for i, a in enumerate(alpha)]
    finally:
        for restore in restores:
            restore()
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return {b.name: s for b, s in zip(blocks, scores, strict=True)}


@register_method(
    "diep",
    requires=("count",),
    reference="Bai et al., arXiv 2509.16105 (our reading)",
    fit=diep_fit,
    default_allocation="learned",
    options={"steps": int, "lr": float, "budget_weight": float, "binary_weight": float, "init": float},
)
def diep(stats, generator=None, **kwargs):
    """Scores come from `diep_fit`."""
    return stats["count"]
