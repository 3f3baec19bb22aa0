"""`hf-moe-prune`: the command line (argparse). The work itself is in `hf_moe_prune.cli_commands`.

    hf-moe-prune prune   [MODEL] --method reap --ratio 0.5 --calibration data.jsonl --output DIR
    hf-moe-prune inspect [MODEL] [--calibration ...] [--plan PLAN] --output DIR
    hf-moe-prune eval    [MODEL] [--reference BASE] [--data ...] [--tasks ...]
    hf-moe-prune plan show PLAN_OR_FOLDER
    hf-moe-prune plan apply PLAN [BASE_MODEL] --output DIR

With no MODEL every command uses the trained Qwen3-MoE fixture shipped with the package and its bundled texts.
Arguments (paths, output folder, method, budget) are checked before any model is loaded; mistakes exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import cli_commands as commands
from . import cli_report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DTYPES = ("auto", "bf16", "fp16", "fp32")

EPILOG = """\
exit codes:
  0  success
  1  runtime failure: a model, dataset or Hub repo could not be loaded or written,
     an optional extra is missing, or the model refuses the request (e.g. a layer
     would keep fewer experts than its top-k)
  2  bad usage: unknown option or method, ratio outside (0, 1), missing model, plan
     or data path, non-empty --output without --overwrite; nothing is written

--json prints a machine-readable report on stdout (messages and progress bars go to
stderr); --quiet turns progress bars and messages off. HF_MOE_PRUNE_DEBUG=1 shows
tracebacks of failures.
"""


class UsageError(Exception):
    """A bad argument, found after argparse: reported like argparse does, exit code 2."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps descriptions to the terminal but keeps the epilog's layout (the exit-code table)."""

    def _fill_text(self, text, width, indent):
        if text.startswith("exit codes"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def _ratio(value: str) -> float:
    try:
        ratio = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {value!r}") from None
    if not 0 < ratio < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) (the fraction of experts removed), got {value}")
    return ratio


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)


def _subparser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, epilog=EPILOG, formatter_class=_Formatter)


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="model folder or Hub id (default: bundled fixture)")


def _add_data(parser: argparse.ArgumentParser, rows: str = "--num-samples") -> None:
    group = parser.add_argument_group("data")
    group.add_argument(rows, type=_positive, default=64, metavar="N", help="packed rows per data source (default: 64)")
    group.add_argument("--seq-len", type=_positive, default=256, metavar="N", help="tokens per row (default: 256)")
    group.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="rows per forward (default: 8)")
    if rows == "--num-samples":
        group.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the row sampling (default: 0)")


def _add_loading(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loading (from_pretrained)")
    group.add_argument("--dtype", choices=DTYPES, help="dtype of the weights (default: transformers' default)")
    group.add_argument("--device-map", metavar="MAP", help="device_map, e.g. auto, cpu, cuda:0")


def _add_output(
    parser: argparse.ArgumentParser, folder_help: str | None, required: bool = True, push: bool = False
) -> None:
    group = parser.add_argument_group("output")
    if folder_help:
        group.add_argument("--output", metavar="DIR", required=required, help=folder_help)
        group.add_argument(
            "--overwrite",
            action="store_true",
            help="write into a non-empty --output; a model is saved there only if it holds nothing but a model "
            "(config, weights, tokenizer, plan, card), which is then replaced in one step, and never if it is the "
            "source model, a parent of it or the working directory",
        )
    if push:
        group.add_argument("--push-to-hub", metavar="REPO", help="also upload the pruned model to this Hub repo")
    group.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    group.add_argument("--quiet", action="store_true", help="no progress bars or info messages")


def _add_prune(sub) -> None:
    prune = _subparser(
        sub,
        "prune",
        "prune a model's routed experts and save the compact checkpoint",
        "Prune the routed experts of MODEL, save it with its tokenizer, plan and model card, and report size and "
        "quality before/after. Default MODEL: the bundled trained qwen3_moe fixture, calibrated and evaluated on its "
        "bundled texts.",
    )
    _add_model(prune)
    pruning = prune.add_argument_group("pruning")
    from .methods import METHODS  # the registry: every method, also ones registered by a plug-in before main()

    pruning.add_argument(
        "--method", default="reap", metavar="NAME", help=f"{', '.join(METHODS.names())} (default: reap)"
    )
    budget = pruning.add_mutually_exclusive_group()
    budget.add_argument(
        "--ratio",
        type=_ratio,
        metavar="R",
        help="fraction of experts removed (with --unit neuron: of routed-expert parameters) (default: 0.5)",
    )
    budget.add_argument("--num-experts-to-keep", type=_positive, metavar="N", help="experts each MoE layer keeps")
    from .registries import ALLOCATIONS, COMPENSATIONS, names_for

    pruning.add_argument(
        "--allocation",
        metavar="NAME|COUNTS",
        help=f"{', '.join(names_for(ALLOCATIONS, 'expert'))} (experts), {', '.join(names_for(ALLOCATIONS, 'neuron'))} "
        "(neurons), or keep counts per layer: 12,10,10,8 or 0:12,3:8 (default: the method's own)",
    )
    pruning.add_argument(
        "--compensation",
        metavar="NAME",
        help=f"kept-expert adjustment: {', '.join(COMPENSATIONS.names())} (default: the method's)",
    )
    streaming = pruning.add_mutually_exclusive_group()
    streaming.add_argument(
        "--streaming",
        action="store_const",
        const=True,
        dest="streaming",
        help="plan layer by layer from the checkpoint files, then read only the kept experts (models larger than "
        "memory; forward-statistics methods). Default: streaming whenever the request allows it",
    )
    streaming.add_argument(
        "--no-streaming",
        action="store_const",
        const=False,
        dest="streaming",
        help="load the whole model first, then prune it",
    )
    pruning.add_argument(
        "--unit",
        choices=["expert", "neuron"],
        help="prune whole experts or expert neurons (default: the method's own; neuron for tenp)",
    )
    pruning.add_argument(
        "--method-kwargs", default="{}", metavar="JSON", help='method options, e.g. {"reduce": "sum"}'
    )
    pruning.add_argument(
        "--calibration", nargs="+", metavar="DATA", help=".txt/.jsonl files or folders, or a Hub dataset name"
    )
    _add_data(prune)
    evaluation = prune.add_argument_group("evaluation")
    evaluation.add_argument("--eval-data", nargs="+", metavar="DATA", help="texts (default: the bundled ones)")
    evaluation.add_argument("--no-eval", action="store_true", help="skip the before/after quality evaluation")
    _add_loading(prune)
    _add_output(prune, "output folder (default: a new folder under ./hf_moe_prune_output)", False, push=True)


def _add_inspect(sub) -> None:
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


def _add_eval(sub) -> None:
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


def _add_plan(sub) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The `hf-moe-prune` argument parser with its subcommands (prune, inspect, eval, plan show/apply)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hf-moe-prune",
        description="One-shot expert pruning of Mixture-of-Experts language models in Hugging Face transformers. "
        "Run `hf-moe-prune prune` with no arguments to prune the bundled trained fixture offline.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{prune,inspect,eval,plan}")
    for add in (_add_prune, _add_inspect, _add_eval, _add_plan):
        add(sub)
    return parser


def _looks_local(value: str) -> bool:
    return os.path.exists(value) or value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value


def _check_model(value: str | None, what: str = "model") -> None:
    if value is None:
        return
    if _looks_local(value) and not os.path.isdir(value):
        raise UsageError(f"{what} {value!r} is not an existing folder (nor a Hub id like 'org/name').")
    if os.path.isdir(value) and not os.path.isfile(os.path.join(value, "config.json")):
        raise UsageError(f"{what} folder {value!r} holds no config.json: it is not a transformers model folder.")


def _check_sources(values: list[str] | None, what: str) -> None:
    for value in values or []:
        path = value.split("=", 1)[1] if "=" in value and not os.path.exists(value) else value
        missing = not os.path.exists(path)
        if missing and (_looks_local(path) or path.endswith((".jsonl", ".json", ".txt"))):
            raise UsageError(f"{what} {path!r} does not exist.")


def _check_output(args: argparse.Namespace) -> None:
    output = getattr(args, "output", None)
    if output is None:
        return
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output!r} is a file; give a folder.")
    if args.command == "prune" or getattr(args, "action", None) == "apply":  # the commands that save a model
        from .atomic import check_target

        try:  # the save's own check, before loading: a model folder only, never a source of the model
            check_target(output, args.overwrite, commands.output_sources(args), option="--overwrite")
        except (FileExistsError, ValueError) as error:
            raise UsageError(f"--output: {error}") from error
    elif os.path.isdir(output) and os.listdir(output) and not args.overwrite:
        raise UsageError(f"--output {output!r} exists and is not empty; nothing was written. Pass --overwrite.")


def _check_plan(value: str) -> None:
    path = os.path.join(value, "moe_pruning_plan.json") if os.path.isdir(value) else value
    if not os.path.isfile(path):
        raise UsageError(f"no pruning plan at {path!r} (give moe_pruning_plan.json or a pruned model folder).")
    from .plan import PrunePlan

    try:
        PrunePlan.load(path)  # a crafted or damaged plan is refused here, before any model is loaded
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def check_args(args: argparse.Namespace) -> None:
    """Check paths, names and data that argparse cannot, before any model is loaded.

    Args:
        args (`argparse.Namespace`): Parsed arguments; `prune` gets its `MoEPruneConfig` as `args.config`.

    Raises:
        `UsageError`: a missing path, a non-empty output folder without `--overwrite`, an output that is not only a
            model (or is the source model, a parent of it, or the working directory), an unknown method, ...
    """
    command = args.command
    _check_model(getattr(args, "base_model", None) if command == "plan" else args.model)
    _check_model(getattr(args, "reference", None), "--reference")
    _check_sources(getattr(args, "calibration", None), "calibration data")
    _check_sources(getattr(args, "data", None) or getattr(args, "eval_data", None), "evaluation data")
    if getattr(args, "plan", None):
        _check_plan(args.plan)
    _check_output(args)
    fixture_data = commands.is_fixture_based(args.model) if command != "plan" else False
    if command == "inspect" and not args.calibration and not fixture_data:
        raise UsageError("give --calibration DATA (bundled texts are used only for the bundled fixture).")
    if command == "eval" and not args.data and not args.tasks and not fixture_data:
        raise UsageError("give --data DATA and/or --tasks TASKS (bundled texts fit only the bundled fixture).")
    if command == "plan" and args.action == "apply" and args.base_model is None:
        base = commands.recorded_plan_base(args.plan)
        if base is None:
            raise UsageError("the plan records no base_model: give BASE_MODEL.")
        _check_model(base, "the plan's base_model")
    if command == "prune":
        try:
            args.config = commands.prune_config(args)
        except ValueError as error:
            raise UsageError(str(error)) from error


def main(argv: list[str] | None = None) -> int:
    """Run `hf-moe-prune` with `argv` (default: `sys.argv[1:]`) and return the exit code (0, 1 or 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"hf-moe-prune {args.command}" + (f" {args.action}" if args.command == "plan" else "")
    try:
        check_args(args)
    except UsageError as error:
        print(f"{name}: error: {error}\n(see `{name} --help`)", file=sys.stderr)
        return EXIT_USAGE
    try:
        commands.setup_logging(args.quiet)
        report = commands.run(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure ends with one clear line (and the traceback when debugging)
        if os.environ.get("HF_MOE_PRUNE_DEBUG"):
            raise
        print(f"{name}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        cli_report.print_report(args, report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
