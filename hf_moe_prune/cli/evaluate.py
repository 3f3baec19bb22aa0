"""`hf-moe-prune eval`: perplexity per domain (against a reference model) and lm-eval tasks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hf_moe_prune.bundled import fixture_path
from hf_moe_prune.cli.common import eval_texts, load_model, log, recorded_base

LM_EVAL_EXTRA = "pip install 'hf-moe-prune[lm-eval]'"


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

    from hf_moe_prune.pipeline.evaluation import evaluate

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
