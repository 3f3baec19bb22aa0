"""The CUDA / bf16 path, checked and timed on one GPU (CPU-only machines have nothing to run here).

    python benchmarks/gpu.py --json gpu.json               # check every family, time the fixtures
    python benchmarks/gpu.py --json gpu.json --write       # ... and write the tables into benchmarks/RESULTS.md

1. Every supported family, tiny random model in bf16 on the GPU: prune 50% with `reap`, slicing ≡ masking the router
   (logits compared in bf16), save → reload onto the GPU with bit-identical weights, `generate()`.
2. Each trained fixture loaded with `from_pretrained(..., pruning_config=..., dtype=bfloat16, device_map=DEVICE)` for
   several methods: calibration + pruning time, perplexity and KL against the unpruned bf16 model, peak GPU memory;
   the same pruning in fp32 on the GPU must pick the same experts as on the CPU for the forward-statistics methods
   (reported, not asserted: ties may break differently).
3. Generation speed of the unpruned and the 50%-pruned fixture (median of repeats, greedy, bf16).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import traceback

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import ADAPTERS, MoEPruneConfig, find_blocks
from hf_moe_prune.calibration.runner import model_inputs
from hf_moe_prune.pipeline.evaluation import evaluate
from hf_moe_prune.reshape import mask_experts
from hf_moe_prune.testing import DOMAINS, FIXTURES, fixture_path, fixture_texts, mixed_texts, tiny_model

try:
    from _results import median_seconds, write_section
except ImportError:  # run as a module
    from benchmarks._results import median_seconds, write_section

DEVICE = "cuda"  # --device cpu: a dry run of this script's logic where no GPU is (the numbers mean nothing then)
ROWS = torch.randint(1, 300, (8, 32), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(1))


def _logits(model, ids):
    with torch.no_grad():
        out = model(**model_inputs(model, ids.to(model.device)))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def _sync(reset: bool = False, empty: bool = False) -> None:
    if DEVICE != "cuda":
        return
    torch.cuda.synchronize()
    if reset:
        torch.cuda.reset_peak_memory_stats()
    if empty:
        torch.cuda.empty_cache()


def check_family(family: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        # through from_pretrained, so that modules a family keeps in fp32 (Inkling-2's routers) stay fp32
        reference = tiny_model(family, router_scale=4.0)
        reference.save_pretrained(folder)
        model = type(reference).from_pretrained(folder, dtype=torch.bfloat16, device_map=DEVICE).eval()
    pruned = copy.deepcopy(model)
    plan = hf_moe_prune.prune(pruned, MoEPruneConfig("reap", 0.5, calibration=ROWS), progress=False)
    with mask_experts(find_blocks(model), {b.name: b.kept for b in plan.blocks}):
        masked = _logits(model, IDS)
    sliced = _logits(pruned, IDS)
    with tempfile.TemporaryDirectory() as folder:
        pruned.save_pretrained(folder)
        reloaded = type(pruned).from_pretrained(folder, dtype=torch.bfloat16, device_map=DEVICE)
    saved, loaded = pruned.state_dict(), reloaded.state_dict()
    same_weights = saved.keys() == loaded.keys() and all(
        torch.equal(saved[k], loaded[k].to(saved[k].device)) for k in saved
    )
    generated = None
    if hasattr(pruned, "generate") and hasattr(pruned.config, "vocab_size"):
        try:
            out = pruned.generate(
                IDS[:1, :4].to(DEVICE), max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0
            )
            generated = int(out.shape[1])
        except Exception as error:  # some families' tiny heads cannot generate (token classifiers)
            generated = f"{type(error).__name__}"
    return {
        "kept": [b.num_kept for b in plan.blocks],
        "slice_vs_mask_max_abs": float((sliced - masked).abs().max()),
        "logit_scale": float(masked.abs().max()),
        "reload_same_weights": bool(same_weights),
        "reload_max_abs": float((_logits(reloaded, IDS) - sliced).abs().max()),
        "generate_len": generated,
    }


def check_families(families: list[str]) -> dict:
    results = {}
    for family in families:
        try:
            results[family] = check_family(family)
        except Exception as error:
            results[family] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]}
        _sync(empty=True)
    return results


def run_fixture(name: str, methods: list[str]) -> dict:
    path = fixture_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=DEVICE).eval()
    base = evaluate(reference, tokenizer, texts, seq_len=256, progress=False)
    out = {"base_ppl": base.overall.perplexity, "methods": {}}
    calibration = mixed_texts()
    for method in methods:
        row = {}
        try:
            _sync(reset=True)
            start = time.perf_counter()
            config = MoEPruneConfig(method, 0.5, calibration=calibration, num_samples=64, seq_len=256)
            model = AutoModelForCausalLM.from_pretrained(
                path, pruning_config=config, dtype=torch.bfloat16, device_map=DEVICE
            )
            _sync()
            row["load_and_prune_s"] = time.perf_counter() - start
            row["stats_s"] = model.moe_pruning_plan.stats_seconds
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else 0.0
            result = evaluate(model, tokenizer, texts, reference=reference, seq_len=256, progress=False)
            row.update(ppl=result.overall.perplexity, kl=result.overall.kl, top1=result.overall.top1_agreement)
            gpu_kept = [b.kept for b in model.moe_pruning_plan.blocks]
            if method in ("frequency", "soft_count", "reap", "ean"):
                cpu = AutoModelForCausalLM.from_pretrained(path, pruning_config=config)  # fp32 on the CPU
                cpu_kept = [b.kept for b in cpu.moe_pruning_plan.blocks]
                row["same_experts_as_cpu_fp32"] = sum(a == b for a, b in zip(gpu_kept, cpu_kept)) / len(gpu_kept)
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map=DEVICE)
                row["reload_max_abs"] = float((_logits(reloaded, IDS) - _logits(model, IDS)).abs().max())
            del model
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"
            row["trace"] = traceback.format_exc()[-2000:]
        out["methods"][method] = row
        _sync(empty=True)
    return out


def generation_speed(name: str, repeats: int = 5, new_tokens: int = 128) -> dict:
    path = fixture_path(name)
    full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=DEVICE).eval()
    config = MoEPruneConfig("reap", 0.5, calibration=mixed_texts(), num_samples=64, seq_len=256)
    pruned = AutoModelForCausalLM.from_pretrained(path, pruning_config=config, dtype=torch.bfloat16, device_map=DEVICE)
    prompt = torch.randint(1, 300, (8, 64), generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def generate(model):
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        _sync()

    times = {
        label: median_seconds(lambda m=m: generate(m), repeats) for label, m in (("full", full), ("pruned", pruned))
    }
    return {
        "full_tok_s": 8 * new_tokens / times["full"],
        "pruned_tok_s": 8 * new_tokens / times["pruned"],
        "speedup": times["full"] / times["pruned"],
        "repeats": repeats,
    }


def markdown(report: dict) -> str:
    lines = [f"GPU: {report['gpu']}, torch {report['torch']}, transformers {report['transformers']}, bf16.", ""]
    families = report["families"]
    failed = {k: v for k, v in families.items() if "error" in v or not v.get("reload_same_weights")}
    worst = max((v["slice_vs_mask_max_abs"] for v in families.values() if "error" not in v), default=float("nan"))
    lines += [
        f"Families: {len(families) - len(failed)} of {len(families)} pass on the GPU in bf16 (prune, slice ≡ mask, "
        f"reload with bit-identical weights); largest |sliced − masked| logit difference {worst:.3g}.",
    ]
    for name, value in failed.items():
        lines.append(f"- `{name}`: {value.get('error', 'reload weights differ')}")
    lines += [
        "",
        "| fixture | method | load+prune s | stats s | peak GPU MiB | ppl | KL | top-1 | same experts as CPU fp32 |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for fixture, data in report["fixtures"].items():
        lines.append(f"| {fixture} | (unpruned) | | | | {data['base_ppl']:.2f} | | | |")
        for method, row in data["methods"].items():
            if "error" in row:
                lines.append(f"| {fixture} | {method} | error: {row['error'][:80]} | | | | | | |")
                continue
            same = row.get("same_experts_as_cpu_fp32")
            lines.append(
                f"| {fixture} | {method} | {row['load_and_prune_s']:.2f} | {row['stats_s'] or 0:.2f} | "
                f"{row['peak_gpu_mib']:.0f} | {row['ppl']:.2f} | {row['kl']:.4f} | {row['top1']:.3f} | "
                f"{'' if same is None else f'{same:.0%} of layers'} |"
            )
    speed = report.get("speed", {})
    for fixture, row in speed.items():
        lines.append(
            f"\nGeneration ({fixture}, batch 8, 128 new tokens, median of {row['repeats']}): unpruned "
            f"{row['full_tok_s']:.0f} tok/s, reap 50% {row['pruned_tok_s']:.0f} tok/s ({row['speedup']:.2f}x)."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    parser.add_argument("--from-json", help="only format a report written before (no GPU needed)")
    parser.add_argument("--methods", default="frequency,soft_count,ean,reap,compel,diep,tenp")
    parser.add_argument("--families", help="comma-separated families to check (default: all)")
    parser.add_argument("--fixtures", default=",".join(FIXTURES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script's logic")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            report = json.load(f)
    else:
        if DEVICE == "cuda" and not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py needs a CUDA GPU.")
        import transformers

        report = {
            "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "fixtures": {},
            "speed": {},
        }

        def save():  # after every stage, so that a run stopped at its time limit still reports what it measured
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=1)

        report["families"] = check_families(args.families.split(",") if args.families else ADAPTERS.names())
        save()
        fixtures = [name for name in args.fixtures.split(",") if name]
        for name in fixtures:
            report["fixtures"][name] = run_fixture(name, args.methods.split(","))
            save()
        for name in fixtures:
            report["speed"][name] = generation_speed(name, args.repeats)
            save()
    text = markdown(report)
    print(text)
    if args.write:
        write_section("gpu", text)


if __name__ == "__main__":
    main()
