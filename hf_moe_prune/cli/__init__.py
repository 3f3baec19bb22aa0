"""`hf-moe-prune`: the command line (argparse). A dispatch table maps each subcommand to the module that runs it:
`prune`, `calibrate`, `inspect`, `evaluate` (eval), `plan` (plan show / plan apply); `parser` builds the arguments,
`checks` checks them before any model loads, `report` prints the result.

    hf-moe-prune prune   [MODEL] --method reap --ratio 0.5 --calibration data.jsonl --output DIR
    hf-moe-prune calibrate [MODEL] --calibration data.jsonl --output STATS [--streaming]
    hf-moe-prune prune   [MODEL] --statistics STATS --ratio 0.25 --output DIR
    hf-moe-prune export-gguf PRUNED_DIR --output model.gguf
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
from collections.abc import Callable
from typing import Any

from hf_moe_prune.cli.calibrate import run_calibrate
from hf_moe_prune.cli.checks import UsageError, check_args
from hf_moe_prune.cli.common import setup_logging
from hf_moe_prune.cli.evaluate import run_eval
from hf_moe_prune.cli.gguf import run_export_gguf
from hf_moe_prune.cli.inspect import run_inspect
from hf_moe_prune.cli.parser import build_parser
from hf_moe_prune.cli.plan import run_plan_apply, run_plan_show
from hf_moe_prune.cli.prune import run_prune
from hf_moe_prune.cli.report import print_report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# (command, action) -> the function that runs it and returns its JSON-serializable report
COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], dict[str, Any]]] = {
    ("prune", None): run_prune,
    ("calibrate", None): run_calibrate,
    ("export-gguf", None): run_export_gguf,
    ("inspect", None): run_inspect,
    ("eval", None): run_eval,
    ("plan", "show"): run_plan_show,
    ("plan", "apply"): run_plan_apply,
}

__all__ = ["COMMANDS", "UsageError", "build_parser", "check_args", "main", "run", "run_parsed"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the subcommand `args` names and return its JSON-serializable report.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.
    """
    return COMMANDS[args.command, getattr(args, "action", None) if args.command == "plan" else None](args)


def main(argv: list[str] | None = None) -> int:
    """Run `hf-moe-prune` with `argv` (default: `sys.argv[1:]`) and return the exit code (0, 1 or 2)."""
    return run_parsed(build_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Check the parsed arguments, run the subcommand and print its report; return the exit code (0, 1 or 2).

    The `hf-moe-prune` launcher (`hf_moe_prune_cli`) parses the command line before this package is imported, then
    calls this.
    """
    name = f"hf-moe-prune {args.command}" + (f" {args.action}" if args.command == "plan" else "")
    try:
        check_args(args)
    except UsageError as error:
        print(f"{name}: error: {error}\n(see `{name} --help`)", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging(args.quiet)
        report = run(args)
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
        print_report(args, report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
