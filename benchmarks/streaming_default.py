"""Does the automatic streaming default (`streaming=None`) give the plan and model of a full load, on every fixture?

    python benchmarks/streaming_default.py            # every trained fixture in the repo, reap at 0.25 and 0.5
    python benchmarks/streaming_default.py --write    # ... and write the table into benchmarks/RESULTS.md

For each fixture folder under `hf_moe_prune/testing/fixtures` (the bundled 16-expert ones and the 32-expert
`olmoe` / `deepseek_v3` shapes), `from_pretrained(path, pruning_config=...)` runs once with the default (which
streams) and once with `streaming=False`; the table gives whether the default streamed, whether both kept the same
experts, the largest logit difference on fixed token ids, and the median wall time of each (tiny models: the time is
dominated by fixed costs, see the `memory` section for a 2.3 GB checkpoint).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune  # noqa: F401  (registers pruning_config=)
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.bundled import FIXTURES_DIR, mixed_texts

try:
    from _results import write_section
except ImportError:  # run as a module
    from benchmarks._results import write_section


def fixture_folders() -> list[str]:
    return sorted(p.name for p in FIXTURES_DIR.iterdir() if (p / "config.json").is_file())


def run(path: str, ratio: float, streaming: bool | None, texts: list[str], repeats: int):
    times, model = [], None
    for _ in range(repeats):
        config = MoEPruneConfig("reap", ratio, calibration=texts, num_samples=32, seq_len=256, streaming=streaming)
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path, pruning_config=config)
        times.append(time.perf_counter() - start)
    return model, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    texts = mixed_texts()
    ids = torch.randint(1, 4000, (2, 64), generator=torch.Generator().manual_seed(0))
    rows = [
        "| fixture | ratio | default streamed | same kept experts | max abs logit diff | default s | full load s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in fixture_folders():
        path = str(FIXTURES_DIR / name)
        for ratio in args.ratios:
            auto, auto_s = run(path, ratio, None, texts, args.repeats)
            full, full_s = run(path, ratio, False, texts, args.repeats)
            with torch.no_grad():
                diff = float((auto(ids).logits - full(ids).logits).abs().max())
            same = [b.kept for b in auto.moe_pruning_plan.blocks] == [b.kept for b in full.moe_pruning_plan.blocks]
            streamed = "streaming" in auto.moe_pruning_plan.calibration
            rows.append(f"| {name} | {ratio} | {streamed} | {same} | {diff:.1e} | {auto_s:.2f} | {full_s:.2f} |")
            print(rows[-1], flush=True)
    body = "\n".join(rows)
    if args.write:
        write_section(
            "streaming-default",
            f"Calibration: mixed domains, 32 × 256 tokens; reap; medians of {args.repeats} runs.\n\n{body}",
        )


if __name__ == "__main__":
    main()
