"""The helpers all subcommands share: logging, loading a model or plan, data sources, pushing.

Each subcommand's `run_*` function (`hf_moe_prune.cli.prune`, `.inspect`, `.evaluate`, `.plan`) takes the parsed
arguments and returns a JSON-serializable report, which `hf_moe_prune.cli.report` prints for people. Heavy imports
(transformers, matplotlib, lm-eval) happen inside the functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hf_moe_prune.bundled import DOMAINS, FIXTURES_DIR, fixture_path, fixture_texts

_QUIET = False


def setup_logging(quiet: bool) -> None:
    """Set up output for a subcommand: with `quiet`, no progress bars (hf_moe_prune's own bars follow) or info lines.

    Args:
        quiet (`bool`): Turn off transformers' and huggingface_hub's progress bars and warnings, and `log`.
    """
    global _QUIET
    _QUIET = quiet
    if quiet:
        import huggingface_hub.utils
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        huggingface_hub.utils.disable_progress_bars()


def log(message: str) -> None:
    """Print an info line on stderr (stdout stays clean for `--json`), unless `--quiet`.

    Args:
        message (`str`): The line to print.
    """
    if not _QUIET:
        print(message, file=sys.stderr, flush=True)


def recorded_base(model: str | None) -> str | None:
    """The `base_model` recorded in a pruned model folder's config.json, if any.

    Args:
        model (`str`, *optional*): A model folder or Hub id (Hub ids record nothing locally: `None`).
    """
    config = Path(model) / "config.json" if model else None
    if config is None or not config.is_file():
        return None
    return (json.loads(config.read_text(encoding="utf-8")).get("moe_pruning") or {}).get("base_model")


def is_fixture_based(model: str | None) -> bool:
    """True for no model (the bundled fixture), a bundled fixture's folder, or a model pruned from one.

    Args:
        model (`str`, *optional*): The MODEL argument.
    """
    if model is None:
        return True
    fixtures = FIXTURES_DIR.resolve()
    for path in (model, recorded_base(model)):
        if path and Path(path).exists() and Path(path).resolve().parent == fixtures:
            return True
    return False


def calibration_source(args: argparse.Namespace) -> Any:
    """The calibration data `--calibration` names (one source as it is, several chained), the bundled texts for the
    bundled fixture when none is given, else None."""
    sources = getattr(args, "calibration", None)
    if not sources:
        from hf_moe_prune.bundled import mixed_texts

        return mixed_texts() if is_fixture_based(args.model) else None
    if len(sources) == 1:
        return sources[0]
    import itertools

    from hf_moe_prune.calibration import iter_texts

    return itertools.chain.from_iterable(iter_texts(source) for source in sources)


def parse_sources(values: list[str]) -> dict[str, str]:
    """`[NAME=]DATA` items → `{name: data}`; the name defaults to the file stem (or the dataset name).

    Args:
        values (`list[str]`): The items given on the command line.
    """
    sources = {}
    for value in values:
        name, _, data = value.partition("=") if "=" in value and not Path(value).exists() else ("", "", value)
        sources[name or Path(data.rstrip("/")).stem or data] = data
    return sources


def load_model(path: str, args: argparse.Namespace, **kwargs):
    """`AutoModelForCausalLM.from_pretrained(path)` (`AutoModelForSeq2SeqLM` for encoder-decoder models) with
    `--dtype` and `--device-map` applied.

    Args:
        path (`str`): Model folder or Hub id.
        args (`argparse.Namespace`): Parsed arguments (`dtype`, `device_map` when the subcommand has them).
        kwargs: More `from_pretrained` arguments (e.g. `pruning_config`).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    dtypes = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if getattr(args, "dtype", None):
        kwargs["dtype"] = dtypes[args.dtype]
    if getattr(args, "device_map", None):
        kwargs["device_map"] = args.device_map
    seq2seq = getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False)  # Switch Transformers
    return (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path, **kwargs)


def push_function():
    """`hf_moe_prune.push_to_hub`, or a `RuntimeError` that says what to do when this version lacks it."""
    import hf_moe_prune

    push = getattr(hf_moe_prune, "push_to_hub", None)
    if push is None:
        raise RuntimeError(
            "--push-to-hub needs hf_moe_prune.push_to_hub, which this version of hf_moe_prune does not have; "
            "upload the --output folder with `hf upload REPO DIR` instead."
        )
    return push


def disk_bytes(folder: str) -> int | None:
    path = Path(folder)
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else None


def eval_texts(data: list[str] | None, model: str | None) -> dict[str, Any] | None:
    """Evaluation domains: `--data` items, else the bundled evaluation texts for fixture-based models, else `None`.

    Args:
        data (`list[str]`, *optional*): `[NAME=]DATA` items.
        model (`str`, *optional*): The MODEL argument.
    """
    if data:
        return parse_sources(data)
    if is_fixture_based(model):
        return {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    return None


def push_model(push, model, repo: str, tokenizer) -> str:
    """Upload `model` and `tokenizer` to `repo` with `push` (see `push_function`) and return the commit URL.

    Args:
        push (`Callable`): `hf_moe_prune.push_to_hub`.
        model (`PreTrainedModel`): The pruned model.
        repo (`str`): The Hub repo id.
        tokenizer: Its tokenizer.
    """
    log(f"Pushing to the Hub repo {repo} ...")
    info = push(model, repo, tokenizer=tokenizer)
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info)


def load_plan(path: str | None):
    """The `PrunePlan` saved at `path` (a plan file or a pruned model folder), or `None` when there is none.

    Args:
        path (`str`, *optional*): `moe_pruning_plan.json` or a folder holding it.
    """
    from hf_moe_prune.plan import PLAN_FILE, PrunePlan

    if path is None or not (Path(path).is_file() or (Path(path) / PLAN_FILE).is_file()):
        return None
    return PrunePlan.load(path)


def output_sources(args: argparse.Namespace) -> list[str]:
    """What `prune` or `plan apply` reads: the model (or the plan's base model) and the plan's folder.

    `--output` must be none of these nor a parent of one (see `hf_moe_prune.export.atomic.check_target`).

    Args:
        args (`argparse.Namespace`): The parsed arguments.
    """
    if args.command == "prune":
        return [args.model or fixture_path("qwen3_moe"), *(v.split("=", 1)[-1] for v in args.statistics or [])]
    if args.command == "calibrate":
        return [args.model or fixture_path("qwen3_moe")]
    plan = Path(args.plan)
    sources = [str(plan if plan.is_dir() else plan.parent)]
    base = args.base_model or recorded_plan_base(args.plan)
    return [*sources, base] if base else sources


def recorded_plan_base(path: str) -> str | None:
    """The `base_model` a saved plan records.

    Args:
        path (`str`): `moe_pruning_plan.json` or a pruned model folder.
    """
    plan = load_plan(path)
    return plan.base_model if plan is not None else None
