"""Elastic checkpoints: memory and time of loading each size, against a compact checkpoint of the same size.

    python benchmarks/elastic.py [--write] [--repeats 3]   # uses the synthetic ~2.3 GB checkpoint of memory.py

The synthetic Qwen3-MoE checkpoint (bf16, 16 layers × 64 experts; written under --workdir first) is calibrated once
(streaming), saved as one elastic checkpoint at ratios 0.25 / 0.5 / 0.75 (reap, uniform), and each size is also
pruned directly from the same statistics and saved as a compact checkpoint. Then, in a fresh process per load:

* `elastic`: `from_pretrained(elastic, pruning_config=MoEPruneConfig(ratio=r))`: reads only that size's experts;
* `compact`: `from_pretrained(compact_r)`: a stock checkpoint holding exactly that size.

Reported: peak RSS above the RSS after imports, wall time (medians of --repeats alternated runs), the loaded model's
size, and whether both loads give the same logits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402
from memory import write_checkpoint  # noqa: E402

RATIOS = (0.25, 0.5, 0.75)
CHILD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from hf_moe_prune.calibration.runner import peak_rss_kib
    from transformers import AutoModelForCausalLM

    path, ratio = sys.argv[1], float(sys.argv[2])
    base = peak_rss_kib()
    start = time.perf_counter()
    if ratio > 0:
        model = AutoModelForCausalLM.from_pretrained(path, pruning_config=MoEPruneConfig(ratio=ratio))
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    seconds = time.perf_counter() - start
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, 4096, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, :8].float().tolist()
    print(json.dumps({"peak_gb": (peak_rss_kib() - base) / 2**20, "seconds": seconds, "size_gb": size / 2**30,
                      "logits": logits}))
    """
)


def prepare(workdir: Path) -> tuple[Path, dict[float, Path], float]:
    """The synthetic checkpoint, its elastic checkpoint and a compact checkpoint per ratio (made once)."""
    import torch
    from transformers import AutoModelForCausalLM

    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig

    source = workdir / "qwen3_moe_synthetic"
    disk_gb = write_checkpoint(source)
    elastic = workdir / "qwen3_moe_elastic"
    compact = {r: workdir / f"qwen3_moe_compact_{r}" for r in RATIOS}
    if not (elastic / "config.json").exists() or not all((c / "config.json").exists() for c in compact.values()):
        rows = torch.randint(0, 4096, (32, 256), generator=torch.Generator().manual_seed(0))
        data = {"calibration": rows, "num_samples": 32, "seq_len": 256, "batch_size": 8}
        stats = hf_moe_prune.calibrate(str(source), data)
        model = AutoModelForCausalLM.from_pretrained(source)
        hf_moe_prune.save_elastic(model, elastic, stats, ratios=RATIOS, overwrite=True, max_shard_size="500MB")
        for ratio, folder in compact.items():
            pruned = AutoModelForCausalLM.from_pretrained(
                source, pruning_config=MoEPruneConfig(ratio=ratio, statistics=stats)
            )
            pruned.save_pretrained(folder, overwrite=True, max_shard_size="500MB")
            del pruned
        del model
    return elastic, compact, disk_gb


def run(path: Path, ratio: float) -> dict:
    script = path.parent / "elastic_child.py"
    script.write_text(CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(
        [sys.executable, str(script), str(path), str(ratio)], capture_output=True, text=True, env=env, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/hf_moe_prune_memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    elastic, compact, disk_gb = prepare(Path(args.workdir))
    load_before = os.getloadavg()[0]
    lines = [
        f"Synthetic qwen3_moe checkpoint {disk_gb:.2f} GB (bf16, 16 layers × 64 experts); elastic checkpoint at "
        f"ratios "
        f"{', '.join(map(str, RATIOS))} (reap, uniform, one streaming calibration of 32 × 256 tokens); compact "
        f"checkpoints pruned directly from the same statistics. Fresh process per load; medians of {args.repeats} "
        "alternated runs.",
        "",
        "| size | load | peak RSS − after imports (GB) | model (GB) | peak / model | wall s | same logits |",
        "|---|---|---|---|---|---|---|",
    ]
    full = run(elastic, 0.0)
    lines.append(
        f"| full | elastic folder, no pruning_config | {full['peak_gb']:.2f} | {full['size_gb']:.2f} | "
        f"{full['peak_gb'] / full['size_gb']:.2f} | {full['seconds']:.1f} | |"
    )
    for ratio in RATIOS:
        runs = {"elastic": [], "compact": []}
        for _ in range(args.repeats):
            runs["elastic"].append(run(elastic, ratio))
            runs["compact"].append(run(compact[ratio], 0.0))
        same = runs["elastic"][0]["logits"] == runs["compact"][0]["logits"]
        for kind, results in runs.items():
            peak = statistics.median(r["peak_gb"] for r in results)
            seconds = statistics.median(r["seconds"] for r in results)
            size = results[0]["size_gb"]
            lines.append(
                f"| {ratio} | {kind} | {peak:.2f} | {size:.2f} | {peak / size:.2f} | {seconds:.1f} | "
                f"{'yes' if same else 'NO'} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores).",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("elastic", body)


if __name__ == "__main__":
    main()
