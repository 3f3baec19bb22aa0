"""What `hf-moe-prune inspect` (expert usage → JSON and plots) and `hf-moe-prune eval` (quality, lm-eval) do."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .bundled import DOMAINS, fixture_path, fixture_texts, mixed_texts
from .cli_commands import eval_texts, load_model, load_plan, log, parse_sources, recorded_base

LM_EVAL_EXTRA = "pip install 'hf-moe-prune[lm-eval]'"


def run_inspect(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune inspect`: expert usage per layer and domain → expert_usage.json and PNG plots.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.

    Raises:
        `ImportError`: matplotlib is missing (after expert_usage.json was written).
    """
    from transformers import AutoTokenizer

    from .inspection import expert_usage, plot_usage, save_usage

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


def _lm_eval_tasks(model, tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    manager = TaskManager(include_path=args.include_path) if args.include_path else TaskManager()
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        task_manager=manager,
    )
    return {
        task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for task, metrics in results["results"].items()
    }


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune eval`: perplexity/KL/agreement on text, and lm-evaluation-harness tasks.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.

    Raises:
        `ImportError`: `--tasks` without lm-eval installed (checked before any model is loaded).
    """
    if args.tasks:
        try:
            import lm_eval  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"--tasks needs lm-evaluation-harness, which is not installed: {LM_EVAL_EXTRA}"
            ) from error
    from transformers import AutoTokenizer

    from .evaluation import evaluate

    model_path = args.model or fixture_path("qwen3_moe")
    reference_path = args.reference
    if reference_path is None and not args.no_reference:
        base = recorded_base(args.model)
        reference_path = base if base and (Path(base) / "config.json").is_file() else None
    log(f"Evaluating {model_path}" + (f" against {reference_path}" if reference_path else "") + " ...")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_model(model_path, args)
    report: dict[str, Any] = {"model": model_path, "reference": reference_path}
    texts = eval_texts(args.data, args.model)
    if texts:
        reference = load_model(reference_path, args) if reference_path else None
        result = evaluate(
            model,
            tokenizer,
            texts,
            reference=reference,
            seq_len=args.seq_len,
            max_rows=args.max_rows,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        report["quality"] = result.to_dict()
    if args.tasks:
        report["tasks"] = _lm_eval_tasks(model, tokenizer, args)
    return report
