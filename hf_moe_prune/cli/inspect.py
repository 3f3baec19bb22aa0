"""`hf-moe-prune inspect`: how often each expert is routed to, its scores and heatmaps (with a plan: what goes)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from hf_moe_prune.bundled import DOMAINS, fixture_path, fixture_texts, mixed_texts
from hf_moe_prune.cli.common import load_model, load_plan, log, parse_sources


def run_inspect(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune inspect`: expert usage per layer and domain → expert_usage.json and PNG plots.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.

    Raises:
        `ImportError`: matplotlib is missing (after expert_usage.json was written).
    """
    from transformers import AutoTokenizer

    from hf_moe_prune.pipeline.inspection import expert_usage, plot_usage, save_usage

    model_path = args.model or fixture_path("qwen3_moe")
    if args.calibration:
        sources, merged = parse_sources(args.calibration), "all"
    else:
        sources = {d: fixture_texts(d, "calibration") for d in DOMAINS}
        sources["mixed"], merged = mixed_texts(), None
    plan_path = args.plan or (args.model if load_plan(args.model) else None)
    plan = load_plan(plan_path)
    log(f"Inspecting {model_path} on {', '.join(sources)} ...")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_model(model_path, args)
    usage = expert_usage(
        model,
        tokenizer,
        sources,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        merged=merged,
        progress=not args.quiet,
    )
    usage = {"model": model_path, "plan": plan_path, **usage}
    output = Path(args.output)
    files = [save_usage(usage, output / "expert_usage.json")]
    if not args.no_plots:
        try:
            files += plot_usage(usage, output, plan)
        except ImportError as error:
            raise ImportError(f"{error} ({files[0]} was written).") from error
    return {"model": model_path, "plan": plan_path, "files": [str(f) for f in files], "summary": _summary(usage)}


def _summary(usage: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for name, domain in usage["domains"].items():
        layers = {}
        for layer in domain["layers"]:
            share = layer["share"]
            entropy = -sum(s * math.log(s) for s in share if s > 0)
            layers[layer["layer_idx"]] = {
                "experts": layer["num_experts"],
                "unused": sum(1 for c in layer["count"] if c == 0),
                "max_share": round(max(share), 4),
                "effective_experts": round(math.exp(entropy), 2),
            }
        summary[name] = {"tokens": domain["tokens"], "layers": layers}
    return summary
