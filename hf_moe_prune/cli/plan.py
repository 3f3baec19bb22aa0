"""What `hf-moe-prune plan show` and `hf-moe-prune plan apply` do."""

from __future__ import annotations

import argparse
from typing import Any

from hf_moe_prune.cli.common import load_model, load_plan, log, push_function, push_model


def run_plan_show(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune plan show`: the saved plan as a dict.

    Args:
        args (`argparse.Namespace`): The parsed arguments (`args.plan`).
    """
    return load_plan(args.plan).to_dict()


def run_plan_apply(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune plan apply`: reshape a base model to the plan's experts (no calibration), save it, push it.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.
    """
    from transformers import AutoTokenizer

    from hf_moe_prune import apply_plan

    plan = load_plan(args.plan)
    base = args.base_model or plan.base_model
    push = push_function() if args.push_to_hub else None
    from hf_moe_prune.registries import COMPENSATIONS, DEFAULT_COMPENSATION

    compensation = plan.config.get("compensation") or DEFAULT_COMPENSATION
    if compensation in COMPENSATIONS and COMPENSATIONS.get(compensation).changes_weights:
        log(f"warning: compensation {plan.config['compensation']!r} of the plan needs calibration; not replayed.")
    log(f"Applying {args.plan} to {base} ...")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = load_model(base, args)
    before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    after = sum(p.numel() for p in model.parameters())
    from hf_moe_prune.export.saving import save_pruned

    # Model, tokenizer, plan and card appear together in one rename; nothing is written into `output` afterwards.
    save_pruned(model, args.output, tokenizer=tokenizer, overwrite=args.overwrite)
    report = {
        "plan": args.plan,
        "base_model": base,
        "output": args.output,
        "method": plan.method,
        "kept_experts_per_layer": {b.layer_idx: b.num_kept for b in plan.blocks},
        "parameters": {"before": before, "after": after},
    }
    if push is not None:
        report["hub"] = push_model(push, model, args.push_to_hub, tokenizer)
    return report
