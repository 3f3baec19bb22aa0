"""Calibrate once, decide many times: time to decide (and prune) from saved statistics against calibrating.

    python benchmarks/calibrate_once.py [--write] [--repeats 3] [--fixtures ...] [--no-synthetic]

Per trained fixture (full load, in memory): `hf_moe_prune.calibrate` (the one pass every later prune skips), a prune
that calibrates (`prune(model, MoEPruneConfig(ratio, calibration=...))`) and a prune decided from the saved
statistics (`MoEPruneConfig(ratio, statistics=folder)`), at ratios 0.25 / 0.5 / 0.75 with reap. Both prunes measure
themselves on the same held-out rows, so the difference is the calibration pass alone.

On the synthetic ~2.3 GB Qwen3-MoE checkpoint of `benchmarks/memory.py` (16 layers × 64 experts, bf16; written under
--workdir first): streaming calibration from the files (`calibrate(path, ...)`), a streaming `from_pretrained` that
calibrates, and one decided from the statistics (it still reads each layer once: the held-out rows run through the
unpruned layers for the self-measurement, and the kept experts are read).

Medians of --repeats runs after one warm-up; wall times on a shared machine vary, the ratios are the result.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median_seconds, write_section  # noqa: E402
from memory import write_checkpoint  # noqa: E402

import hf_moe_prune  # noqa: E402
from hf_moe_prune import MoEPruneConfig  # noqa: E402
from hf_moe_prune.testing import FIXTURES, fixture_path, mixed_texts  # noqa: E402

RATIOS = (0.25, 0.5, 0.75)


def _median(fn, repeats: int) -> float:
    return median_seconds(fn, repeats)  # one warm-up run first: lazy imports and kernel caches


def fixture_rows(name: str, args, folder: Path) -> list[str]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fixture_path(name))
    data = {"calibration": mixed_texts(), "num_samples": args.num_samples, "seq_len": args.seq_len}
    stats_dir = folder / name
    calibrate = _median(
        lambda: hf_moe_prune.calibrate(model, data, progress=False).save(stats_dir, overwrite=True), args.repeats
    )
    lines = []
    for ratio in RATIOS:
        calibrating = _median(
            lambda ratio=ratio: hf_moe_prune.prune(
                copy.deepcopy(model), MoEPruneConfig(ratio=ratio, **data), progress=False
            ),
            args.repeats,
        )
        config = MoEPruneConfig(ratio=ratio, statistics=stats_dir, num_samples=args.num_samples, seq_len=args.seq_len)
        deciding = _median(
            lambda config=config: hf_moe_prune.prune(copy.deepcopy(model), config, progress=False), args.repeats
        )
        lines.append(
            f"| {name} | {ratio} | {calibrate:.2f} | {calibrating:.2f} | {deciding:.2f} | "
            f"{calibrating / deciding:.1f}x |"
        )
        print(lines[-1], flush=True)
    return lines


def synthetic_rows(args) -> tuple[list[str], float]:
    from transformers import AutoModelForCausalLM

    path = Path(args.workdir) / "qwen3_moe_synthetic"
    disk_gb = write_checkpoint(path)
    rows = torch.randint(0, 4096, (32, 256), generator=torch.Generator().manual_seed(0))
    data = {"calibration": rows, "num_samples": 32, "seq_len": 256, "batch_size": 8}
    stats_dir = Path(args.workdir) / "qwen3_moe_synthetic_statistics"
    calibrate = _median(
        lambda: hf_moe_prune.calibrate(str(path), data, progress=False).save(stats_dir, overwrite=True), args.repeats
    )
    lines = []
    for ratio in (0.25, 0.75):
        streamed = _median(
            lambda ratio=ratio: AutoModelForCausalLM.from_pretrained(
                path, pruning_config=MoEPruneConfig(ratio=ratio, **data)
            ),
            args.repeats,
        )
        config = MoEPruneConfig(ratio=ratio, statistics=stats_dir, batch_size=8)
        deciding = _median(
            lambda config=config: AutoModelForCausalLM.from_pretrained(path, pruning_config=config), args.repeats
        )
        lines.append(
            f"| synthetic qwen3_moe ({disk_gb:.1f} GB, streaming) | {ratio} | {calibrate:.1f} | {streamed:.1f} | "
            f"{deciding:.1f} | {streamed / deciding:.1f}x |"
        )
        print(lines[-1], flush=True)
    return lines, disk_gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", nargs="+", default=list(FIXTURES))
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/hf_moe_prune_memory")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    header = [
        "| model | ratio | calibrate s | prune, calibrating s | prune from statistics s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.fixtures:
            lines += fixture_rows(name, args, Path(folder))
    if not args.no_synthetic:
        synthetic, _ = synthetic_rows(args)
        lines += synthetic
    body = "\n".join(
        [
            f"Fixtures: full load, reap, calibration {args.num_samples} rows × {args.seq_len} tokens (10% held out); "
            "synthetic checkpoint: streaming from_pretrained, 32 × 256 tokens. `calibrate s`: gathering every "
            "statistic once (and saving them); the two prune columns include the held-out self-measurement, "
            "reshaping and, for the synthetic checkpoint, reading the checkpoint. Medians of "
            f"{args.repeats} runs; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
            f"({os.cpu_count()} cores).",
            "",
            *header,
            *lines,
        ]
    )
    print(body)
    if args.write:
        write_section("statistics", body)


if __name__ == "__main__":
    main()
