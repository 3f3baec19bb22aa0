"""What `hf-moe-prune prune` does, and the helpers all subcommands share.

Argument parsing is in `hf_moe_prune.cli`; `inspect` and `eval` are in `hf_moe_prune.cli_analysis`, `plan show/apply`
in `hf_moe_prune.cli_plan`. Each `run_*` function takes the parsed arguments and returns a JSON-serializable report,
which `hf_moe_prune.cli_report` prints for people. Heavy imports (transformers, matplotlib, lm-eval) happen inside
the functions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .bundled import DOMAINS, FIXTURES_DIR, fixture_path, fixture_texts, mixed_texts

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


def prune_config(args: argparse.Namespace):
    """The `MoEPruneConfig` of `hf-moe-prune prune`.

    Args:
        args (`argparse.Namespace`): The parsed `prune` arguments.

    Raises:
        `ValueError`: an unknown method or compensation, a bad budget or `--method-kwargs`, or no calibration data.
    """
    from . import METHODS, MoEPruneConfig

    method = METHODS.get(args.method)
    try:
        method_kwargs = json.loads(args.method_kwargs)
    except json.JSONDecodeError as error:
        raise ValueError(f"--method-kwargs is not valid JSON ({error}).") from None
    if not isinstance(method_kwargs, dict):
        raise ValueError(f"--method-kwargs must be a JSON object, got {args.method_kwargs!r}.")
    allocation = _allocation(args.allocation)
    budget = {}
    if args.ratio is not None:
        budget["ratio"] = args.ratio
    elif args.num_experts_to_keep is not None:
        budget["num_experts_to_keep"] = args.num_experts_to_keep
    elif allocation is None or isinstance(allocation, str):
        budget["ratio"] = 0.5
    calibration: Any = args.calibration
    if not calibration:
        calibration = mixed_texts() if is_fixture_based(args.model) else None
        if calibration is None and method.needs_calibration:
            raise ValueError(f"method {method.name!r} needs calibration data: give --calibration DATA.")
    elif len(calibration) == 1:
        calibration = calibration[0]
    else:
        from .calibration import iter_texts

        calibration = itertools.chain.from_iterable(iter_texts(source) for source in args.calibration)
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
        **budget,
    )


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


def _disk(folder: str) -> int | None:
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


def run_prune(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune prune`: prune while loading, evaluate, save with the tokenizer (one atomic step), push.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments (`args.config` is the `MoEPruneConfig`).
    """
    from transformers import AutoTokenizer

    from .evaluation import evaluate

    config = args.config
    model_path = args.model or fixture_path("qwen3_moe")
    push = push_function() if args.push_to_hub else None
    name = Path(model_path).name if Path(model_path).exists() else model_path.replace("/", "--")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output = Path(args.output or f"hf_moe_prune_output/{name}-{config.method}-{stamp}")
    size_before = _disk(model_path)  # before anything is written

    log(f"Pruning {model_path} with {config.method} ...")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
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
    from .saving import save_pruned

    # Model, tokenizer, plan and card appear together in one rename; nothing is written into `output` afterwards.
    save_pruned(model, output, tokenizer=tokenizer, overwrite=args.overwrite)
    report["safetensors_bytes"] = {"before": size_before, "after": _disk(str(output))}
    if push is not None:
        report["hub"] = push_model(push, model, args.push_to_hub, tokenizer)
    return report


def _attach_quality(model, before, after) -> None:
    from . import card

    attach = getattr(card, "attach_quality", None)  # newer versions put the numbers into the model card
    if attach is not None:
        attach(model, before, after)


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
    from .plan import PLAN_FILE, PrunePlan

    if path is None or not (Path(path).is_file() or (Path(path) / PLAN_FILE).is_file()):
        return None
    return PrunePlan.load(path)


def output_sources(args: argparse.Namespace) -> list[str]:
    """What `prune` or `plan apply` reads: the model (or the plan's base model) and the plan's folder.

    `--output` must be none of these nor a parent of one (see `hf_moe_prune.atomic.check_target`).

    Args:
        args (`argparse.Namespace`): The parsed arguments.
    """
    if args.command == "prune":
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the subcommand `args` names and return its JSON-serializable report.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.
    """
    if args.command == "plan":
        from .cli_plan import run_plan_apply, run_plan_show

        return run_plan_show(args) if args.action == "show" else run_plan_apply(args)
    if args.command == "prune":
        return run_prune(args)
    from .cli_analysis import run_eval, run_inspect

    return run_inspect(args) if args.command == "inspect" else run_eval(args)
