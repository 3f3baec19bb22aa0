"""Pieces of the model card's text: how to load the checkpoint, usage, the neuron table, the `auto` line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def loading_note(uniform: bool, remote_code: bool) -> str:
    """What stock transformers does with this checkpoint when hf_moe_prune is not imported (see `portable`)."""
    if uniform or remote_code:
        return ""
    return (
        "**Loading needs the hf_moe_prune library installed (from its source: no package-index release yet) and "
        "`import hf_moe_prune`** before `from_pretrained`: the MoE "
        "layers keep different numbers (or widths) of experts, a layout stock transformers cannot build. Without the "
        "library the checkpoint is refused on purpose, never loaded with random experts: `Auto*` classes stop at "
        '"model type `hf_moe_prune`", the family\'s own class at its expert-count field, whose value says the same. '
        "vLLM, SGLang, llama.cpp and the Optimum exporters cannot load it; prune with a uniform allocation for them."
    )


def usage(repo: str, uniform: bool, remote_code: bool, auto_class: str = "AutoModelForCausalLM") -> str:
    lines = [f"from transformers import {auto_class}, AutoTokenizer", ""]
    if not uniform and not remote_code:
        lines.insert(0, "import hf_moe_prune  # registers the loader of per-layer expert counts")
    extra = ", trust_remote_code=True" if remote_code and not uniform else ""
    lines += [
        f'model = {auto_class}.from_pretrained("{repo}"{extra})',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
    ]
    return "\n".join(lines)


def neuron_shares(plan) -> list[dict[str, Any]] | None:
    """Per layer: experts kept whole, narrowed, and the share of routed-expert neurons kept (neuron plans only)."""
    if not plan.expert_widths:
        return None
    rows = []
    for b in plan.blocks:
        if b.widths is None:  # a layer left whole (`ignore`, fixed routing) or only losing whole experts
            rows.append(
                {
                    "layer": b.layer_idx,
                    "whole": b.num_kept,
                    "narrowed": 0,
                    "widths": "full",
                    "share": f"{b.num_kept / b.num_experts:.1%}",
                }
            )
            continue
        widths = b.widths
        full = b.intermediate_size or max(widths)
        rows.append(
            {
                "layer": b.layer_idx,
                "whole": sum(w == full for w in widths),
                "narrowed": sum(w < full for w in widths),
                "widths": ", ".join(str(w) for w in sorted(set(widths), reverse=True)),
                "share": f"{sum(widths) / (b.num_experts * full):.1%}",
            }
        )
    return rows


def search_line(search: Mapping[str, Any] | None) -> str | None:
    """One line saying that `auto` chose the method, allocation (and compensation), among how many candidates, and on
    what."""
    if not search:
        return None
    table = search.get("candidates") or []
    judged = [row for row in table if row.get("kl") is not None]
    chosen = table[search["chosen"]] if isinstance(search.get("chosen"), int) and table else {}
    requested = ", ".join(f"{k}={v!r}" for k, v in (search.get("requested") or {}).items())
    return (
        f"Chosen by `{requested}`: `{chosen.get('method')}` with `{chosen.get('allocation')}` allocation"
        f"{' ' + str(chosen.get('method_kwargs')) if chosen.get('method_kwargs') else ''}"
        f"{' and `' + str(chosen['compensation']) + '` compensation' if chosen.get('compensation') else ''}, "
        f"the lowest held-out KL "
        f"({chosen.get('kl')}) of {len(judged)} candidate plans judged on the held-out calibration rows "
        f"({len(table)} considered; the full table is `search` in `moe_pruning_plan.json`)."
    )


def healing_text(healing: Mapping[str, Any] | None) -> str | None:
    """The card's "Healing" paragraph: that the pruned model was distilled toward the unpruned one, on what, for how
    many steps, and what it changed on the held-out rows."""
    if not healing:
        return None
    options = healing.get("options") or {}
    groups = ", ".join(options.get("train") or [])
    lora = healing.get("lora")
    if lora:  # the adapters were merged into the weights: the checkpoint has no peft modules
        trained = (
            f"LoRA adapters (peft, rank {lora.get('r')}, alpha {lora.get('alpha')}) on {groups} "
            f"({healing.get('trained_parameters')} adapter parameters, merged into the weights after training)"
        )
    else:
        trained = f"{groups} ({healing.get('trained_parameters')} parameters)"
    text = (
        f"After the experts were removed, the model was distilled toward the unpruned one for {healing.get('steps')} "
        f"steps ({healing.get('stopped')}) on {healing.get('train_rows')} calibration rows: KL on the next-token "
        f"distribution over the unpruned model's top-{options.get('top_k')} tokens plus the rest, training "
        f"{trained}, AdamW at learning rate {options.get('lr')}."
    )
    if healing.get("held_out_kl_before") is not None:
        text += (
            f" On the held-out rows (never trained on) the KL went from {healing['held_out_kl_before']:.4g} to "
            f"{healing['held_out_kl_after']:.4g} nats per token and the perplexity from "
            f"{healing['held_out_ppl_before']:.3f} to {healing['held_out_ppl_after']:.3f}; the measurement below is "
            "of the healed model."
        )
    return text + " A plan replayed with `apply_plan` does not repeat the healing (it needs the calibration run)."
