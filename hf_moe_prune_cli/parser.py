"""The `hf-moe-prune` argument parser: subcommands, options and help texts (generated lists come from the
registries)."""

from __future__ import annotations

import argparse

from hf_moe_prune_cli.names import names, version

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


def _ratios(value: str) -> list[float]:
    return [_ratio(part) for part in value.split(",") if part.strip()]


def _fraction(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {value!r}") from None
    if not 0 <= fraction < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (the share of calibration rows held out), got {value}")
    return fraction


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
    # every method, also ones registered by a plug-in before main()
    known = names()
    pruning.add_argument(
        "--method",
        default=known["default_method"],
        metavar="NAME",
        help=f"{', '.join(known['methods'])} (default: {known['default_method']})",
    )
    budget = pruning.add_mutually_exclusive_group()
    budget.add_argument(
        "--ratio",
        type=_ratio,
        metavar="R",
        help="fraction of experts removed (with --unit neuron: of routed-expert parameters) (default: 0.5)",
    )
    budget.add_argument("--num-experts-to-keep", type=_positive, metavar="N", help="experts each MoE layer keeps")
    pruning.add_argument(
        "--allocation",
        metavar="NAME|COUNTS",
        help=f"{', '.join(known['expert_allocations'])} (experts), {', '.join(known['neuron_allocations'])} "
        "(neurons), or keep counts per layer: 12,10,10,8 or 0:12,3:8 (default: the method's own)",
    )
    pruning.add_argument(
        "--compensation",
        metavar="NAME",
        help=f"kept-expert adjustment: {', '.join(known['compensations'])} (default: the method's)",
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
    pruning.add_argument(
        "--statistics",
        nargs="+",
        metavar="[NAME=]DIR",
        help="decide from statistics saved by `hf-moe-prune calibrate` instead of calibrating; several NAME=DIR "
        "sets are combined (equal weights, or --statistics-weights)",
    )
    pruning.add_argument(
        "--elastic",
        type=_ratios,
        metavar="R1,R2,...",
        help="write one elastic checkpoint that loads at each of these ratios (from_pretrained(DIR, pruning_config="
        "MoEPruneConfig(ratio=R))) instead of one pruned model; forward-statistics methods, no compensation",
    )
    pruning.add_argument(
        "--statistics-weights", metavar="NAME=W,...", help="weights of the --statistics sets, e.g. code=0.7,chat=0.3"
    )
    _add_data(prune)
    pruning.add_argument(
        "--healing",
        type=int,
        default=0,
        metavar="STEPS",
        help="after pruning, distil the pruned model toward the unpruned one on the calibration rows for up to STEPS "
        "steps (early stopping on the held-out rows); 0: off (default)",
    )
    pruning.add_argument(
        "--healing-options",
        metavar="JSON",
        help='the other healing options, e.g. {"lr": 0.001, "train": ["experts"], "lora": {"r": 16}} (see '
        "MoEPruneConfig's healing)",
    )
    evaluation = prune.add_argument_group("evaluation")
    evaluation.add_argument(
        "--eval-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="share of the calibration rows held out from scoring to measure the pruned model against the unpruned "
        "one (KL, top-1 agreement, perplexity; stored in the plan and card); 0: none (default: 0.1)",
    )
    evaluation.add_argument("--eval-data", nargs="+", metavar="DATA", help="texts (default: the bundled ones)")
    evaluation.add_argument("--no-eval", action="store_true", help="skip the before/after quality evaluation")
    _add_loading(prune)
    _add_output(prune, "output folder (default: a new folder under ./hf_moe_prune_output)", False, push=True)


def build_parser() -> argparse.ArgumentParser:
    """The `hf-moe-prune` argument parser with its subcommands (prune, calibrate, inspect, eval, plan show/apply)."""
    parser = argparse.ArgumentParser(
        prog="hf-moe-prune",
        description="One-shot expert pruning of Mixture-of-Experts language models in Hugging Face transformers. "
        "Run `hf-moe-prune prune` with no arguments to prune the bundled trained fixture offline.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{prune,calibrate,inspect,eval,plan,export-gguf}"
    )
    from hf_moe_prune_cli.subcommands import add_calibrate, add_eval, add_export_gguf, add_inspect, add_plan

    for add in (_add_prune, add_calibrate, add_inspect, add_eval, add_plan, add_export_gguf):
        add(sub)
    return parser
