"""The `hf-moe-prune` subcommands other than `prune`: calibrate, inspect, eval, plan show/apply, export-gguf (the
shared option groups are in `hf_moe_prune_cli.parser`)."""

from __future__ import annotations

from hf_moe_prune_cli.parser import (
    _add_data,
    _add_loading,
    _add_model,
    _add_output,
    _fraction,
    _subparser,
)


def add_calibrate(sub) -> None:
    calibrate = _subparser(
        sub,
        "calibrate",
        "run the calibration pass once and save its statistics",
        "Calibrate MODEL once and save every statistic the pruning methods read (with the routing facts, a "
        "fingerprint of the data and the held-out rows) into --output; then `hf-moe-prune prune MODEL --statistics "
        "DIR --ratio R` decides any ratio, method and allocation that needs only forward sums without calibrating "
        "again. Default MODEL: the bundled trained qwen3_moe fixture and its bundled texts.",
    )
    _add_model(calibrate)
    group = calibrate.add_argument_group("calibration")
    group.add_argument(
        "--calibration", nargs="+", metavar="DATA", help=".txt/.jsonl files or folders, or a Hub dataset name"
    )
    group.add_argument(
        "--streaming",
        action="store_true",
        help="calibrate layer by layer from the checkpoint files, one decoder layer in memory at a time",
    )
    group.add_argument(
        "--eval-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="share of the rows held out (stored, never summed) for later prunes to measure themselves on "
        "(default: 0.1)",
    )
    _add_data(calibrate)
    _add_loading(calibrate)
    _add_output(calibrate, "folder for the statistics (statistics.safetensors + statistics.json)")


def add_export_gguf(sub) -> None:
    export = _subparser(
        sub,
        "export-gguf",
        "write a uniformly pruned checkpoint as one GGUF file for llama.cpp",
        "Write the saved (uniformly pruned) checkpoint MODEL as one GGUF file: llama.cpp's tensor names, the pruned "
        "expert count, the byte-level BPE tokenizer. Families: qwen3_moe, qwen2_moe, olmoe; for the others run "
        "llama.cpp's convert_hf_to_gguf.py on the folder (uniform checkpoints are stock).",
    )
    export.add_argument("model", metavar="MODEL", help="a saved checkpoint folder")
    export.add_argument("--output", metavar="FILE", required=True, help="the .gguf file to write (must not exist)")
    export.add_argument("--dtype", dest="gguf_dtype", choices=["f16", "f32"], default="f16", help="matrices (f16)")
    export.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    export.add_argument("--quiet", action="store_true", help="no progress bars or info messages")


def add_inspect(sub) -> None:
    inspect = _subparser(
        sub,
        "inspect",
        "expert-usage statistics per layer and domain, as JSON and PNG plots",
        "Route each data domain through MODEL and write expert_usage.json and PNG plots: the routed-token share per "
        "layer x expert (a panel per domain), every method's expert scores, and with a plan the experts it keeps. "
        "Default MODEL: the bundled fixture, with domains code, prose and mixed. Plots need matplotlib "
        "(pip install 'hf-moe-prune[plots]').",
    )
    _add_model(inspect)
    group = inspect.add_argument_group("inspection")
    group.add_argument("--calibration", nargs="+", metavar="[NAME=]DATA", help="a domain per file, folder or dataset")
    group.add_argument("--plan", metavar="PLAN", help="moe_pruning_plan.json or pruned model folder to mark")
    group.add_argument("--no-plots", action="store_true", help="write only the JSON statistics")
    _add_data(inspect)
    _add_loading(inspect)
    _add_output(inspect, "folder for expert_usage.json and the PNG plots")


def add_eval(sub) -> None:
    evaluate = _subparser(
        sub,
        "eval",
        "perplexity, KL and top-1 agreement vs a reference; lm-evaluation-harness tasks",
        "Evaluate MODEL on text (perplexity per domain; against a reference model also KL divergence and top-1 "
        "agreement) and, with --tasks, on lm-evaluation-harness tasks (pip install 'hf-moe-prune[lm-eval]'). "
        "Default data: the bundled evaluation texts when MODEL is the bundled fixture or was pruned from it. Default "
        "reference: the base model a pruned MODEL records, when it is a local folder.",
    )
    _add_model(evaluate)
    group = evaluate.add_argument_group("evaluation")
    group.add_argument("--reference", metavar="BASE", help="model to compare with (usually the unpruned one)")
    group.add_argument("--no-reference", action="store_true", help="compare with no reference")
    group.add_argument("--data", nargs="+", metavar="[NAME=]DATA", help="a domain per .txt/.jsonl file or folder")
    _add_data(evaluate, rows="--max-rows")
    harness = evaluate.add_argument_group("lm-evaluation-harness (pip install 'hf-moe-prune[lm-eval]')")
    harness.add_argument("--tasks", metavar="T1,T2", help="comma-separated task names")
    harness.add_argument("--include-path", metavar="DIR", help="folder of extra task YAML files (local tasks)")
    harness.add_argument("--limit", type=float, metavar="N", help="examples per task (a fraction if < 1)")
    harness.add_argument("--num-fewshot", type=int, metavar="N", help="few-shot examples")
    _add_loading(evaluate)
    _add_output(evaluate, None)


def add_plan(sub) -> None:
    plan = _subparser(
        sub,
        "plan",
        "show a saved pruning plan, or apply it to a base model without calibration",
        "Work with moe_pruning_plan.json, saved next to every pruned model.",
    )
    actions = plan.add_subparsers(dest="action", required=True, metavar="{show,apply}")
    show = _subparser(actions, "show", "print a plan: method, per-layer kept counts and expert ids", "Print a plan.")
    show.add_argument("plan", metavar="PLAN", help="moe_pruning_plan.json or a pruned model folder")
    _add_output(show, None)
    apply = _subparser(
        actions,
        "apply",
        "apply a plan to a base model (no calibration) and save it with its tokenizer",
        "Slice BASE_MODEL to the experts PLAN keeps, without calibration, and save it with its tokenizer.",
    )
    apply.add_argument("plan", metavar="PLAN", help="moe_pruning_plan.json or a pruned model folder")
    apply.add_argument("base_model", nargs="?", metavar="BASE_MODEL", help="default: the base_model the plan records")
    _add_loading(apply)
    _add_output(apply, "folder for the pruned model", push=True)
