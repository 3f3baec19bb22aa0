"""Memory of pruning a checkpoint larger than the memory budget: streaming (plan before load) vs a full load.

    python benchmarks/memory.py [--write] [--repeats 3]   # writes a synthetic ~2.3 GB checkpoint under --workdir first

A random Qwen3-MoE checkpoint (bf16, 16 layers × 64 experts of 512 neurons, hidden 768) is written to disk, then
pruned to 25% of its experts with `reap` in a fresh process per mode:

* `streaming`: `from_pretrained(path, pruning_config=MoEPruneConfig(..., streaming=True))` under a memory cap
  (`RLIMIT_DATA`: heap and anonymous memory, where tensors live) of --cap-gb, less than half the checkpoint;
* `after load`: `from_pretrained(path)` then `hf_moe_prune.prune`, once under the same cap and once without it.

Reported: peak RSS above the RSS after imports (`ru_maxrss`), wall and CPU time (user + system: less sensitive to
other processes on a shared machine), the pruned model's size, and the two targets of streaming: (peak RSS − RSS
after imports) / pruned size ≤ 1.5, and streaming time / (full load + prune) time ≤ 1.5. The streaming and the
uncapped full-load runs alternate `--repeats` times (medians reported); the capped full load runs once.
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

try:
    from _results import write_section
except ImportError:  # run as a module
    from benchmarks._results import write_section

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from transformers import AutoModelForCausalLM

    path, mode, cap_gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rows = torch.randint(0, 4096, (32, 256), generator=torch.Generator().manual_seed(0))
    config = MoEPruneConfig("reap", 0.75, calibration=rows, batch_size=8, streaming=mode == "streaming")
    from hf_moe_prune.calibration.runner import peak_rss_kib
    base = peak_rss_kib()
    if cap_gb > 0:
        data = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmData:")][0] * 1024
        limit = data + int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    try:
        if mode == "streaming":
            model = AutoModelForCausalLM.from_pretrained(path, pruning_config=config)
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
            hf_moe_prune.prune(model, config)
        status = "ok"
        size = sum(p.numel() * p.element_size() for p in model.parameters())
    except (MemoryError, RuntimeError) as error:
        status, size = f"failed: {type(error).__name__}", 0
        print(str(error)[:500], file=sys.stderr)
    seconds = time.perf_counter() - start
    now = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime
    peak = peak_rss_kib()
    result = {"status": status, "peak_gb": (peak - base) / 2**20, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "pruned_gb": size / 2**30}
    print(json.dumps(result))
    """
)


def write_checkpoint(path: Path) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (path / "config.json").exists():
        config = AutoConfig.for_model(
            "qwen3_moe",
            vocab_size=4096,
            hidden_size=768,
            intermediate_size=1536,
            moe_intermediate_size=512,
            num_hidden_layers=16,
            num_attention_heads=12,
            num_key_value_heads=4,
            head_dim=64,
            num_experts=64,
            num_experts_per_tok=4,
            max_position_embeddings=512,
            dtype="bfloat16",
        )
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(path, max_shard_size="500MB")
        del model
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**30


def run(path: Path, mode: str, cap_gb: float) -> dict:
    script = path.parent / "memory_child.py"
    script.write_text(CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(
        [sys.executable, str(script), str(path), mode, str(cap_gb)], capture_output=True, text=True, env=env
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:  # killed before it could report (e.g. the allocator aborting on the cap)
        return {"status": f"failed: exit {out.returncode}", "peak_gb": float("nan"), "seconds": 0.0, "pruned_gb": 0}
    return json.loads(lines[-1])


def median_run(results: list[dict]) -> dict:
    """The medians of `results` (repeats of one mode); failed repeats make the mode failed."""
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        return failed[0]
    keys = ("peak_gb", "seconds", "cpu_seconds", "pruned_gb")
    return {"status": "ok", **{k: statistics.median(r.get(k, float("nan")) for r in results) for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/hf_moe_prune_memory")
    parser.add_argument("--cap-gb", type=float, default=1.15)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = Path(args.workdir) / "qwen3_moe_synthetic"
    disk_gb = write_checkpoint(path)
    streaming, full = [], []
    load_before = os.getloadavg()[0]
    for i in range(args.repeats):  # alternated, so that load from other processes hits both modes alike
        streaming.append(run(path, "streaming", args.cap_gb))
        full.append(run(path, "after_load", 0))
        print(f"repeat {i + 1}: streaming {streaming[-1]}, after load {full[-1]}", flush=True)
    rows = [
        ("streaming, capped", median_run(streaming)),
        ("after load, capped", run(path, "after_load", args.cap_gb)),
        ("after load, no cap", median_run(full)),
    ]
    pruned = next((r["pruned_gb"] for _, r in rows if r["pruned_gb"]), float("nan"))
    lines = [
        f"Synthetic qwen3_moe checkpoint: {disk_gb:.2f} GB on disk (bf16, 16 layers × 64 experts), pruned with reap "
        f"to 16 experts per layer ({pruned:.2f} GB); calibration 32 × 256 tokens; memory cap {args.cap_gb} GB "
        f"(RLIMIT_DATA above the memory after imports), {disk_gb / args.cap_gb:.1f}x smaller than the checkpoint. "
        f"Medians of {args.repeats} alternated runs (the capped full load: one run).",
        "",
        "| mode | result | peak RSS − RSS after imports (GB) | (peak − after imports) / pruned size "
        "| wall s | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        ratio = r["peak_gb"] / pruned if r["status"] == "ok" else float("nan")
        lines.append(
            f"| {label} | {r['status']} | {r['peak_gb']:.2f} | {ratio:.2f} | {r['seconds']:.1f} "
            f"| {r.get('cpu_seconds', float('nan')):.1f} |"
        )
        print(lines[-1], flush=True)
    stream, after = rows[0][1], rows[2][1]
    if stream["status"] == after["status"] == "ok":
        lines += [
            "",
            f"Streaming / (full load + prune): wall time {stream['seconds'] / after['seconds']:.2f}x, CPU time "
            f"{stream['cpu_seconds'] / after['cpu_seconds']:.2f}x (target ≤ 1.5x); streaming peak "
            f"{stream['peak_gb'] / pruned:.2f}x the pruned model (target ≤ 1.5x). Per-run wall times: streaming "
            + ", ".join(f"{r['seconds']:.1f}" for r in streaming)
            + "; full load "
            + ", ".join(f"{r['seconds']:.1f}" for r in full)
            + f" s. 1-minute load average of the machine {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
            f"after the runs ({os.cpu_count()} cores): with other jobs on it, wall times vary from run to run and "
            "CPU time is the steadier comparison.",
        ]
    body = "\n".join(lines)
    if args.write:
        write_section("memory", body)
    print(body)


if __name__ == "__main__":
    main()
