"""The model card (README.md) of a pruned model, rendered from `model_cards/pruned_moe.md`."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hf_moe_prune.export.card_text import healing_text, loading_note, neuron_shares, search_line, usage
from hf_moe_prune.methods import METHODS
from hf_moe_prune.pipeline.measure import quality_markdown
from hf_moe_prune.plan import PrunePlan

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "pruned_moe.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# Citations by the arXiv id that a method's `reference` names.
CITATIONS = {
    "2510.13999": (
        "@article{lasby2025reap,\n"
        "  title   = {REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression},\n"
        "  author  = {Lasby and Lazarevich and Sinnadurai and Lie and Ioannou and Thangarasa},\n"
        "  journal = {arXiv preprint arXiv:2510.13999},\n"
        "  year    = {2025}\n"
        "}"
    ),
}


def _count(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit} ({n:,})"
    return f"{n:,}"


def _bytes(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def hub_base_model(base: str | None) -> str | None:
    """`base` when it names a Hub repo (`org/name`), None when it is a local folder or unknown."""
    if not base or os.path.exists(base) or os.path.isabs(base) or not _REPO_ID.match(base):
        return None
    return base


def base_license(base: str | None) -> dict[str, str]:
    """License metadata (`license`, `license_name`, `license_link`) of the base model's card, or `{}` if unknown.

    Reads the card in the base model's local folder, else from the Hub cache, else from the Hub; any failure (offline,
    no card, no license) returns `{}`, since the license is a courtesy to carry over, not a requirement to save.
    """
    if not base:
        return {}
    card = None
    try:
        if os.path.isdir(base):
            readme = os.path.join(base, "README.md")
            card = ModelCard.load(readme) if os.path.isfile(readme) else None
        elif hub_base_model(base):
            from huggingface_hub import constants, try_to_load_from_cache

            cached = try_to_load_from_cache(base, "README.md")
            if isinstance(cached, str):
                card = ModelCard.load(cached)
            elif not constants.HF_HUB_OFFLINE:
                card = ModelCard.load(base)
    except Exception as err:  # offline, gated, no README: the card is written without a license
        logger.info("No license read from the card of %s: %s", base, err)
        return {}
    data = card.data.to_dict() if card is not None else {}
    return {key: data[key] for key in ("license", "license_name", "license_link") if data.get(key)}


def format_quality(quality: Any) -> str | None:
    """Markdown for the card's quality section.

    Args:
        quality: A markdown string; `{label: EvalResult}`; or `(before, after)` `EvalResult`s of
            `hf_moe_prune.pipeline.evaluation.evaluate` (labelled "base" and "pruned").
    """
    if quality is None or isinstance(quality, str):
        return quality
    from hf_moe_prune.pipeline.evaluation import format_markdown

    if isinstance(quality, Mapping):
        return format_markdown(quality)
    before, after = quality
    return format_markdown({"base": before, "pruned": after})


def attach_quality(model, before, after=None) -> str:
    """Record measured quality on `model`, so its model card (save_pretrained, push_to_hub) shows it.

    Args:
        model (`PreTrainedModel`): The pruned model.
        before (`EvalResult`): `hf_moe_prune.pipeline.evaluation.evaluate` of the base model (or a markdown string,
            or a `{label: EvalResult}` mapping, then `after` is omitted).
        after (`EvalResult`, *optional*): The same evaluation of the pruned model (with `reference=` the base model,
            for KL and top-1 agreement).

    Returns:
        `str`: the markdown table now stored in `model.moe_pruning_quality`.
    """
    model.moe_pruning_quality = format_quality(before if after is None else (before, after))
    return model.moe_pruning_quality


def render_model_card(
    plan: PrunePlan,
    model=None,
    quality: Any = None,
    repo_id: str | None = None,
    remote_code: bool = False,
    tags: list[str] | None = None,
) -> ModelCard:
    """Render the card for `plan`: YAML metadata (base model, license, tags, library) and what was done.

    Args:
        plan (`PrunePlan`): The plan of the pruned model.
        model (`PreTrainedModel`, *optional*): The pruned model (for its dtype, i.e. sizes in bytes).
        quality (*optional*): Measured quality, see `format_quality`.
        repo_id (`str`, *optional*): The Hub repo the card is published in (used in the usage snippet).
        remote_code (`bool`, *optional*, defaults to `False`): The repo ships `modeling_pruned.py` (non-uniform plans).
        tags (`list[str]`, *optional*): Extra tags.
    """
    base = hub_base_model(plan.base_model)
    uniform = plan.is_uniform
    remote_code = remote_code and not uniform
    seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))  # Switch Transformers
    method_tags = ["moe", "pruning", "expert-pruning", "hf_moe_prune", plan.method]
    data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text2text-generation" if seq2seq else "text-generation",
        tags=list(dict.fromkeys([*method_tags, *(tags or [])])),
        **base_license(plan.base_model),
    )
    experts_before = sum(b.num_experts for b in plan.blocks)
    experts_after = sum(b.num_kept for b in plan.blocks)
    counts = [b.num_kept for b in plan.blocks]
    summary = f"{experts_before - experts_after} of {experts_before} routed experts removed " + (
        f"(every MoE layer keeps {counts[0]})." if len(set(counts)) == 1 else f"(per-layer counts {counts})."
    )
    neurons = neuron_shares(plan)
    if neurons:
        narrowed = sum(len(b.neurons or {}) for b in plan.blocks)
        summary = (
            f"{narrowed} of {experts_after} kept routed experts narrowed to fewer intermediate neurons "
            f"({experts_before - experts_after} removed whole); every kept expert stays reachable by the router."
        )
    c = plan.calibration
    calib_text = c.get("source", "none")
    if c.get("tokens"):
        held = f"; {c['held_out_rows']} more rows held out to measure" if c.get("held_out_rows") else ""
        calib_text += f", {c['rows']} rows × {c['seq_len']} tokens ({c['tokens']:,} tokens){held}"
    if neurons:
        allocation = (
            f"{plan.config.get('allocation')} neuron schedule (experts of different widths; loading needs "
            "`import hf_moe_prune`)"
        )
    elif uniform:
        allocation = "uniform (a stock checkpoint: plain transformers loads it)"
    elif remote_code:
        allocation = "non-uniform (per-layer counts; loading needs `trust_remote_code=True`, not hf_moe_prune)"
    else:
        allocation = "non-uniform (per-layer counts; loading needs `import hf_moe_prune`)"
    method = METHODS.get(plan.method) if plan.method in METHODS else None
    reference = method.reference if method else ""
    arxiv = re.search(r"arXiv (\d{4}\.\d{4,5})", reference)
    dtype = getattr(model, "dtype", None)
    itemsize = getattr(dtype, "itemsize", None)
    params = plan.parameters
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=f"{base.split('/')[-1] if base else 'Pruned MoE model'} ({plan.method} expert pruning)",
        base_model_line=f"[{base}](https://huggingface.co/{base})" if base else "A MoE language model",
        method=plan.method,
        reference=reference or "see hf_moe_prune",
        ratio="—" if plan.ratio is None else f"{plan.ratio:g}",
        summary=summary,
        loading_note=loading_note(uniform, remote_code),
        usage=usage(
            repo_id or "path/to/this/folder",
            uniform,
            remote_code,
            "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM",
        ),
        experts_before=experts_before,
        experts_after=experts_after,
        params_before=_count(params.get("before")),
        params_after=_count(params.get("after")),
        size_label=f"size ({str(dtype).removeprefix('torch.')})" if itemsize else None,
        size_before=_bytes((params.get("before") or 0) * (itemsize or 0)),
        size_after=_bytes((params.get("after") or 0) * (itemsize or 0)),
        allocation=allocation,
        calibration=calib_text,
        layers=[
            {"layer": b.layer_idx, "kept": b.num_kept, "total": b.num_experts, "ids": ", ".join(map(str, b.kept))}
            for b in plan.blocks
        ],
        neurons=neurons,
        quality=format_quality(quality),
        held_out=quality_markdown(plan.quality),
        search=search_line(plan.search),
        healing=healing_text(plan.healing),
        citation=CITATIONS.get(arxiv.group(1)) if arxiv else None,
    )


def write_model_card(
    folder: str | os.PathLike,
    plan: PrunePlan,
    model=None,
    repo_id: str | None = None,
    remote_code: bool = False,
    quality: Any = None,
    tags: list[str] | None = None,
) -> None:
    """Write README.md into `folder` (after transformers wrote its own files, which it would otherwise replace).

    Quality defaults to what `attach_quality` recorded on `model`; the other arguments are `render_model_card`'s.
    """
    if quality is None:
        quality = getattr(model, "moe_pruning_quality", None)
    tags = [*(getattr(model, "model_tags", None) or []), *(tags or [])]
    card = render_model_card(plan, model, quality=quality, repo_id=repo_id, remote_code=remote_code, tags=tags)
    card.save(os.path.join(folder, "README.md"))
