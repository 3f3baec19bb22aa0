"""`hf-moe-prune`: the command line.

    hf-moe-prune prune [MODEL] --method reap --ratio 0.5 [--calibration PATH ...] [--output DIR]

With no MODEL it prunes the trained Qwen3-MoE fixture shipped with the package, calibrated on its bundled text, and
prints size and quality before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-moe-prune", description="One-shot expert pruning of MoE language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prune = sub.add_parser(
        "prune",
        help="prune a model and save the compact checkpoint",
        description="Prune routed experts of MODEL (a local folder or Hub id; default: the bundled trained "
        "qwen3_moe fixture with its calibration text), save it, and report size and quality before/after.",
    )
    prune.add_argument("model", nargs="?", help="model folder or Hub id (default: bundled fixture)")
    prune.add_argument("--method", default="reap", help="scoring method (default: reap)")
    budget = prune.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, help="fraction of routed experts to remove (default: 0.5)")
    budget.add_argument("--num-experts-to-keep", type=int, help="experts each MoE layer keeps")
    budget.add_argument("--allocation", help="per-layer keep counts, comma separated (e.g. 12,10,10,8)")
    prune.add_argument("--calibration", nargs="+", help="calibration .txt/.jsonl files or folders, or a dataset name")
    prune.add_argument("--eval-data", nargs="+", help="evaluation texts (files); default: bundled fixture texts")
    prune.add_argument("--num-samples", type=int, default=64)
    prune.add_argument("--seq-len", type=int, default=256)
    prune.add_argument("--batch-size", type=int, default=8)
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--method-kwargs", default="{}", help="JSON dict of method options")
    prune.add_argument("--output", help="output folder (default: a new folder under ./hf_moe_prune_output)")
    prune.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    prune.add_argument("--no-eval", action="store_true", help="skip the before/after quality evaluation")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _size(model) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    return params, sum(p.numel() * p.element_size() for p in model.parameters())


def _disk(folder: str) -> int | None:
    path = Path(folder)
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else None


def run_prune(args: argparse.Namespace) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import MoEPruneConfig
    from .evaluation import evaluate
    from .testing.trained import DOMAINS, fixture_path, fixture_texts, mixed_texts

    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    bundled = args.model is None
    model_path = fixture_path("qwen3_moe") if bundled else args.model
    calibration = mixed_texts() if bundled and not args.calibration else args.calibration
    if isinstance(calibration, list) and len(calibration) == 1 and not bundled:
        calibration = calibration[0]
    budget = {"ratio": 0.5}
    if args.ratio is not None:
        budget = {"ratio": args.ratio}
    elif args.num_experts_to_keep is not None:
        budget = {"num_experts_to_keep": args.num_experts_to_keep}
    elif args.allocation:
        budget = {"allocation": [int(x) for x in args.allocation.split(",")]}
    config = MoEPruneConfig(
        method=args.method,
        calibration=calibration,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        method_kwargs=json.loads(args.method_kwargs),
        **budget,
    )
    name = Path(model_path).name if Path(model_path).exists() else model_path.replace("/", "--")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output = Path(args.output or f"hf_moe_prune_output/{name}-{config.method}-{stamp}")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:  # fail before the (long) pruning
        raise FileExistsError(f"{output} exists and is not empty; choose another --output or pass --overwrite.")

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, pruning_config=config)
    seconds = time.perf_counter() - start
    model.save_pretrained(output, overwrite=args.overwrite)
    tokenizer.save_pretrained(output)
    plan = model.moe_pruning_plan
    report = {
        "model": model_path,
        "output": str(output),
        "method": plan.method,
        "kept_experts_per_layer": {b.layer_idx: b.num_kept for b in plan.blocks},
        "parameters": plan.parameters,
        "safetensors_bytes": {"before": _disk(model_path), "after": _disk(str(output))},
        "prune_seconds": round(seconds, 2),
    }
    if not args.no_eval and (bundled or args.eval_data):
        texts = (
            {d: fixture_texts(d, "evaluation") for d in DOMAINS}
            if not args.eval_data
            else {Path(p).stem: p for p in args.eval_data}
        )
        reference = AutoModelForCausalLM.from_pretrained(model_path)
        before = evaluate(reference, tokenizer, texts, seq_len=args.seq_len, progress=not args.quiet)
        after = evaluate(model, tokenizer, texts, reference=reference, seq_len=args.seq_len, progress=not args.quiet)
        report["quality"] = {"before": before.to_dict(), "after": after.to_dict()}
    return report


def _print_report(report: dict) -> None:
    params, disk = report["parameters"], report["safetensors_bytes"]
    print(f"\nPruned {report['model']} with {report['method']} -> {report['output']}")
    print(f"  experts kept per layer: {report['kept_experts_per_layer']}  ({report['prune_seconds']} s)")
    print(f"  parameters: {params['before']:,} -> {params['after']:,} ({params['after'] / params['before']:.1%})")
    if disk["before"]:
        print(f"  safetensors on disk: {disk['before'] / 1e6:.2f} MB -> {disk['after'] / 1e6:.2f} MB")
    if "quality" in report:
        before, after = report["quality"]["before"], report["quality"]["after"]
        print(f"  {'domain':<8} {'ppl before':>11} {'ppl after':>10} {'KL':>8} {'top-1 agree':>12}")
        rows = [(n, before["domains"][n], after["domains"][n]) for n in before["domains"]]
        for name, b, a in [*rows, ("all", before["overall"], after["overall"])]:
            ppl = f"{b['perplexity']:>11.2f} {a['perplexity']:>10.2f}"
            print(f"  {name:<8} {ppl} {a['kl']:>8.4f} {a['top1_agreement']:>12.3f}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run_prune(args)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as error:
        print(f"hf-moe-prune: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
