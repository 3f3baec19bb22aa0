"""The model card (README.md) of a pruned model, rendered from `model_cards/pruned_moe.md`."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .methods import METHODS
from .plan import PrunePlan

TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "pruned_moe.md"


def _human(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit} ({n:,})"
    return f"{n:,}"


def render_model_card(plan: PrunePlan, model=None, quality: str | None = None) -> ModelCard:
    """Render the card for `plan`: YAML metadata (base model, tags, library) and a body saying what was done."""
    base = plan.base_model if plan.base_model and not os.path.isabs(plan.base_model) else None
    data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["moe", "pruning", "expert-pruning", "hf_moe_prune", plan.method],
    )
    uniform = plan.is_uniform
    load = "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    if not uniform:
        load = "import hf_moe_prune  # registers the loader of non-uniform expert counts\n" + load
    load += 'model = AutoModelForCausalLM.from_pretrained("<this repo or folder>")'
    experts_before = sum(b.num_experts for b in plan.blocks)
    experts_after = sum(b.num_kept for b in plan.blocks)
    counts = sorted({b.num_kept for b in plan.blocks})
    summary = (
        f"{experts_before - experts_after} of {experts_before} routed experts removed "
        f"({'every MoE layer keeps ' + str(counts[0]) if uniform else 'per-layer counts ' + str(counts)})."
    )
    calibration = plan.calibration
    calib_text = calibration.get("source", "none")
    if calibration.get("tokens"):
        calib_text += (
            f", {calibration['rows']} rows × {calibration['seq_len']} tokens ({calibration['tokens']:,} tokens)"
        )
    method = METHODS.get(plan.method) if plan.method in METHODS else None
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=f"{base.split('/')[-1] if base else 'Pruned MoE model'} ({plan.method} expert pruning)",
        base_model_line=f"[{base}](https://huggingface.co/{base})" if base else "A MoE language model",
        method=plan.method,
        reference=method.reference if method else "",
        summary=summary,
        usage=load,
        experts_before=experts_before,
        experts_after=experts_after,
        params_before=_human(plan.parameters.get("before")),
        params_after=_human(plan.parameters.get("after")),
        allocation="uniform" if uniform else "non-uniform (per-layer counts; loading needs `import hf_moe_prune`)",
        calibration=calib_text,
        layers=[
            {"layer": b.layer_idx, "kept": b.num_kept, "total": b.num_experts, "ids": ", ".join(map(str, b.kept))}
            for b in plan.blocks
        ],
        quality=quality,
    )


def write_model_card(folder: str | os.PathLike, plan: PrunePlan, model=None) -> None:
    """Write README.md into `folder` (after transformers wrote its own files, which it would otherwise replace)."""
    quality = getattr(model, "moe_pruning_quality", None)
    render_model_card(plan, model, quality=quality).save(os.path.join(folder, "README.md"))
