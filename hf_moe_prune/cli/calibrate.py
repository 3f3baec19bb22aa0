"""`hf-moe-prune calibrate`: run the calibration pass once and save its statistics, to decide any number of prunes
from them later (`hf-moe-prune prune MODEL --statistics DIR --ratio ...`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from hf_moe_prune.bundled import fixture_path
from hf_moe_prune.cli.common import calibration_source, disk_bytes, load_model, log


def calibration_config(args: argparse.Namespace):
    """The `MoEPruneConfig` whose calibration fields `hf-moe-prune calibrate` uses (the budget does not matter).

    Raises:
        `ValueError`: no calibration data for a model other than the bundled fixture.
    """
    from hf_moe_prune import MoEPruneConfig

    calibration = calibration_source(args)
    if calibration is None:
        raise ValueError("give --calibration DATA (bundled texts are used only for the bundled fixture).")
    return MoEPruneConfig(
        ratio=0.5,
        calibration=calibration,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_fraction=args.eval_fraction,
    )


def run_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-moe-prune calibrate`: gather every statistic (layer by layer with `--streaming`) and save them.

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments (`args.config` is the calibration config).
    """
    import hf_moe_prune

    model_path = args.model or fixture_path("qwen3_moe")
    progress = not args.quiet
    start = time.perf_counter()
    if args.streaming:
        log(f"Calibrating {model_path} layer by layer ...")
        stats = hf_moe_prune.calibrate(model_path, args.config, progress=progress)
    else:
        from transformers import AutoTokenizer

        log(f"Loading {model_path} ...")
        model = load_model(model_path, args)
        log("Calibrating ...")
        stats = hf_moe_prune.calibrate(model, args.config, AutoTokenizer.from_pretrained(model_path), progress)
    seconds = time.perf_counter() - start
    folder = stats.save(args.output, overwrite=args.overwrite)
    fingerprint = stats.fingerprint
    return {
        "model": model_path,
        "output": str(folder),
        "blocks": len(stats.blocks),
        "statistics": sorted(stats.names),
        "rows": fingerprint["rows"],
        "seq_len": fingerprint["seq_len"],
        "held_out_rows": fingerprint["held_out_rows"],
        "calibrate_seconds": round(seconds, 2),
        "bytes": disk_bytes(str(folder)),
    }
