"""Checks of the parsed arguments that argparse cannot make (paths, output folder, plan, budget), before any model
is loaded: a mistake exits with code 2 and nothing is written."""

from __future__ import annotations

import argparse
import os

from hf_moe_prune.cli.calibrate import calibration_config
from hf_moe_prune.cli.common import is_fixture_based, output_sources, recorded_plan_base
from hf_moe_prune.cli.prune import prune_config


class UsageError(Exception):
    """A bad argument, found after argparse: reported like argparse does, exit code 2."""


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
    if args.command in ("prune", "calibrate") or getattr(args, "action", None) == "apply":  # they save a folder
        from hf_moe_prune.export.atomic import check_target

        try:  # the save's own check, before loading: a model folder only, never a source of the model
            check_target(output, args.overwrite, output_sources(args), option="--overwrite")
        except (FileExistsError, ValueError) as error:
            raise UsageError(f"--output: {error}") from error
    elif os.path.isdir(output) and os.listdir(output) and not args.overwrite:
        raise UsageError(f"--output {output!r} exists and is not empty; nothing was written. Pass --overwrite.")


def _check_plan(value: str) -> None:
    path = os.path.join(value, "moe_pruning_plan.json") if os.path.isdir(value) else value
    if not os.path.isfile(path):
        raise UsageError(f"no pruning plan at {path!r} (give moe_pruning_plan.json or a pruned model folder).")
    from hf_moe_prune.plan import PrunePlan

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
    if command == "export-gguf":
        if os.path.exists(args.output):
            raise UsageError(f"--output {args.output!r} exists; nothing was written. Choose a new file name.")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            raise UsageError(f"--output {args.output!r}: its folder does not exist.")
        return
    _check_output(args)
    fixture_data = is_fixture_based(args.model) if command != "plan" else False
    if command == "inspect" and not args.calibration and not fixture_data:
        raise UsageError("give --calibration DATA (bundled texts are used only for the bundled fixture).")
    if command == "eval" and not args.data and not args.tasks and not fixture_data:
        raise UsageError("give --data DATA and/or --tasks TASKS (bundled texts fit only the bundled fixture).")
    if command == "plan" and args.action == "apply" and args.base_model is None:
        base = recorded_plan_base(args.plan)
        if base is None:
            raise UsageError("the plan records no base_model: give BASE_MODEL.")
        _check_model(base, "the plan's base_model")
    for value in getattr(args, "statistics", None) or []:
        folder = value.split("=", 1)[1] if "=" in value and not os.path.exists(value) else value
        if not os.path.isfile(os.path.join(folder, "statistics.json")):
            raise UsageError(
                f"--statistics {folder!r} holds no statistics.json (write one with hf-moe-prune calibrate)."
            )
    if command in ("prune", "calibrate"):
        try:
            args.config = prune_config(args) if command == "prune" else calibration_config(args)
        except (ValueError, TypeError) as error:
            raise UsageError(str(error)) from error
