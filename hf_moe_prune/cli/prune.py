"""`hf-moe-prune prune`: prune a model (or the bundled fixture) and save it, with its plan, card and measured
quality."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hf_moe_prune.bundled import fixture_path
from hf_moe_prune.cli.common import (
    calibration_source,
    disk_bytes,
    eval_texts,
    load_model,
    log,
    push_function,
    push_model,
)


def _allocation(value: str | None) -> str | list[int] | dict[int, int] | None:
    """None (the method's own), a named allocation, or keep counts per layer."""
    if value is None or not any(c.isdigit() for c in value):
        return value
    try:
        if ":" in value:
            return {int(k): int(v) for k, v in (item.split(":") for item in value.split(","))}
        return [int(x) for x in value.split(",")]
    except ValueError:
        raise ValueError(
            f"--allocation must be a name (uniform, global, ...), 12,10,10,8 or 0:12,3:8; got {value!r}."
        ) from None


def _statistics(args: argparse.Namespace) -> dict[str, Any]:
    """`statistics` (one folder, or NAME=DIR sets) and `statistics_weights` from `--statistics` /
    `--statistics-weights`."""
    values = getattr(args, "statistics", None)
    if not values:
        if getattr(args, "statistics_weights", None):
            raise ValueError("--statistics-weights weighs --statistics NAME=DIR sets; give --statistics.")
        return {}
    named = [v.split("=", 1) for v in values if "=" in v]
    if len(values) == 1 and not named:
        statistics: Any = values[0]
    elif len(named) == len(values):
        statistics = dict(named)
    else:
        raise ValueError("--statistics takes one DIR, or several NAME=DIR sets to combine.")
    weights = None
    if args.statistics_weights:
        try:
            weights = {k: float(w) for k, w in (item.split("=") for item in args.statistics_weights.split(","))}
        except ValueError:
            raise ValueError(
                f"--statistics-weights must read NAME=W,NAME=W, got {args.statistics_weights!r}."
            ) from None
    return {"statistics": statistics, "statistics_weights": weights}


def _json_object(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} is not valid JSON ({error}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}.")
    return value


def prune_config(args: argparse.Namespace):
    """The `MoEPruneConfig` of `hf-moe-prune prune`.

    Args:
        args (`argparse.Namespace`): The parsed `prune` arguments.

    Raises:
        `ValueError`: an unknown method or compensation, a bad budget, `--method-kwargs` or `--healing-options`, or
            no calibration data.
    """
    from hf_moe_prune import METHODS, MoEPruneConfig

    method = METHODS.get(args.method)
    method_kwargs = _json_object("--method-kwargs", args.method_kwargs)
    healing = _json_object("--healing-options", getattr(args, "healing_options", None) or "{}")
    if getattr(args, "healing", 0):
        healing["steps"] = args.healing
    if healing and not healing.get("steps"):
        raise ValueError("--healing-options sets how healing runs; give its number of steps with --healing STEPS.")
    allocation = _allocation(args.allocation)
    budget = {}
    if args.ratio is not None:
        budget["ratio"] = args.ratio
    elif args.num_experts_to_keep is not None:
        budget["num_experts_to_keep"] = args.num_experts_to_keep
    elif allocation is None or isinstance(allocation, str):
        budget["ratio"] = 0.5
    calibration = calibration_source(args)
    if calibration is None and method.needs_calibration and not args.statistics:
        raise ValueError(
            f"method {method.name!r} needs calibration data: give --calibration DATA (or --statistics DIR)."
        )
    return MoEPruneConfig(
        method=args.method,
        compensation=args.compensation,
        allocation=allocation,
        calibration=calibration,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        method_kwargs=method_kwargs,
        unit=args.unit,
        streaming=args.streaming,
        eval_fraction=args.eval_fraction,
        healing=healing or None,
        **_statistics(args),
        **budget,
    )


def run_prune(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune prune`: prune while loading, evaluate, save with the tokenizer (one atomic step), push.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments (`args.config` is the `MoEPruneConfig`).
    """
    from transformers import AutoTokenizer

    from hf_moe_prune.pipeline.evaluation import evaluate

    config = args.config
    model_path = args.model or fixture_path("qwen3_moe")
    push = push_function() if args.push_to_hub else None
    name = Path(model_path).name if Path(model_path).exists() else model_path.replace("/", "--")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output = Path(args.output or f"hf_moe_prune_output/{name}-{config.method}-{stamp}")
    size_before = disk_bytes(model_path)  # before anything is written

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if getattr(args, "elastic", None):
        return _run_elastic(args, config, model_path, tokenizer, output, push)
    log(f"Pruning {model_path} with {config.method} ...")
    start = time.perf_counter()
    model = load_model(model_path, args, pruning_config=config)
    seconds = time.perf_counter() - start
    plan = model.moe_pruning_plan
    report: dict[str, Any] = {
        "model": model_path,
        "output": str(output),
        "method": plan.method,
        "kept_experts_per_layer": {b.layer_idx: b.num_kept for b in plan.blocks},
        "parameters": plan.parameters,
        "prune_seconds": round(seconds, 2),
    }
    if plan.healing:
        report["healing"] = {k: v for k, v in plan.healing.items() if k != "history"}
    if plan.quality:  # measured on the calibration rows held out from scoring (or why not)
        report["held_out_quality"] = plan.quality
    if plan.unit == "neuron":  # share of each layer's routed-expert neurons kept
        report["kept_neurons_per_layer"] = {
            b.layer_idx: round(sum(b.widths or []) / (b.num_experts * b.intermediate_size), 4)
            for b in plan.blocks
            if b.intermediate_size
        }
    texts = None if args.no_eval else eval_texts(args.eval_data, args.model)
    if texts:  # before saving, so that the model card shows the measured quality
        log("Evaluating before/after ...")
        reference = load_model(model_path, args)
        progress = not args.quiet
        before = evaluate(reference, tokenizer, texts, seq_len=args.seq_len, progress=progress)
        after = evaluate(model, tokenizer, texts, reference=reference, seq_len=args.seq_len, progress=progress)
        report["quality"] = {"before": before.to_dict(), "after": after.to_dict()}
        del reference
        _attach_quality(model, before, after)
    log(f"Saving to {output} ...")
    from hf_moe_prune.export.saving import save_pruned

    # Model, tokenizer, plan and card appear together in one rename; nothing is written into `output` afterwards.
    save_pruned(model, output, tokenizer=tokenizer, overwrite=args.overwrite)
    report["safetensors_bytes"] = {"before": size_before, "after": disk_bytes(str(output))}
    if push is not None:
        report["hub"] = push_model(push, model, args.push_to_hub, tokenizer)
    return report


def _run_elastic(args, config, model_path: str, tokenizer, output: Path, push) -> dict[str, Any]:
    """`prune --elastic R1,R2,...`: one checkpoint that loads at every ratio (`hf_moe_prune.save_elastic`)."""
    import hf_moe_prune
    from hf_moe_prune.elastic import push_elastic

    log(f"Loading {model_path} ...")
    model = load_model(model_path, args)
    log(f"Deciding nested plans at ratios {args.elastic} with {config.method} ...")
    start = time.perf_counter()
    meta = hf_moe_prune.save_elastic(
        model,
        output,
        config,
        ratios=args.elastic,
        tokenizer=tokenizer,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    report: dict[str, Any] = {
        "model": model_path,
        "output": str(output),
        "method": config.method,
        "elastic_sizes": meta["sizes"],
        "seconds": round(time.perf_counter() - start, 2),
        "safetensors_bytes": {"after": disk_bytes(str(output))},
    }
    if push is not None:
        report["hub"] = str(push_elastic(output, args.push_to_hub))
    return report


def _attach_quality(model, before, after) -> None:
    from hf_moe_prune.export import card

    attach = getattr(card, "attach_quality", None)  # newer versions put the numbers into the model card
    if attach is not None:
        attach(model, before, after)
