"""Speed benchmark: calibration cost of each forward-only method, and generation speed/size of pruned vs full.

    python benchmarks/speed.py                      # bundled trained qwen3_moe fixture
    python benchmarks/speed.py --synthetic          # a larger random qwen3_moe (64 experts, hidden 512)

Calibration cost is reported as the ratio of the method's calibration wall time (observers attached) to one plain
forward pass over the same rows with the same batch size; medians over --repeats runs, per experts implementation.
"""

from __future__ import annotations

import argparse
import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import METHODS, MoEPruneConfig, find_blocks
from hf_moe_prune.calibration import calibration_rows, collect_stats
from hf_moe_prune.testing import fixture_path, mixed_texts

try:
    from _results import median_seconds, write_section
except ImportError:  # run as a module
    from benchmarks._results import median_seconds, write_section


def _load(args):
    if args.synthetic:
        config = AutoConfig.for_model(
            "qwen3_moe",
            vocab_size=4096,
            hidden_size=512,
            intermediate_size=1024,
            moe_intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            num_experts=64,
            num_experts_per_tok=4,
            norm_topk_prob=True,
        )
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        rows = torch.randint(0, 4096, (args.rows, args.seq_len), generator=torch.Generator().manual_seed(0))
        return model, rows, "synthetic qwen3_moe (64 experts, top-4, hidden 512, 4 layers)"
    from transformers import AutoTokenizer

    path = fixture_path("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = calibration_rows(mixed_texts(), AutoTokenizer.from_pretrained(path), args.rows, args.seq_len)
    return model, rows, "trained fixture qwen3_moe"


def calibration_table(model, rows, args) -> list[str]:
    blocks = find_blocks(model)
    lines = ["| experts impl | plain forward (s) | " + " | ".join(m for m in METHODS.names() if m != "random") + " |"]
    lines.append("|" + "---|" * (len(METHODS.names()) + 1))
    for impl in args.impls:
        model.set_experts_implementation(impl)

        def plain(extra={"logits_to_keep": 1, "use_cache": False}):  # noqa: B006 (read-only)
            with torch.no_grad():
                for start in range(0, len(rows), args.batch_size):
                    model(input_ids=rows[start : start + args.batch_size], **extra)

        base = median_seconds(plain, args.repeats)
        cells = []
        for name in METHODS.names():
            method = METHODS.get(name)
            if not method.needs_calibration:
                continue
            t = median_seconds(
                lambda m=method: collect_stats(model, blocks, m.requires, rows, args.batch_size, progress=False),
                args.repeats,
            )
            cells.append(f"{t / base:.2f}x")
        lines.append(f"| {impl} | {base:.3f} | " + " | ".join(cells) + " |")
    return lines


def generation_table(model, rows, args) -> list[str]:
    pruned = copy.deepcopy(model)
    hf_moe_prune.prune(
        pruned, MoEPruneConfig("reap", 0.5, calibration=rows, batch_size=args.batch_size), progress=False
    )
    prompt = rows[:1, :16]
    lines = [
        "| model | parameters | parameter bytes | generate tokens/s (batch 1, greedy, 64 new) |",
        "|---|---:|---:|---:|",
    ]
    for label, m in (("full", model), ("reap 50%", pruned)):
        m.set_experts_implementation(args.impls[-1])

        def gen(m=m):
            m.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)

        seconds = median_seconds(gen, args.repeats)
        params = sum(p.numel() for p in m.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
        lines.append(f"| {label} | {params:,} | {nbytes / 1e6:.2f} MB | {64 / seconds:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", nargs="+", default=["eager", "grouped_mm"])
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, rows, label = _load(args)
    body = "\n".join(
        [
            f"#### {label}: {rows.shape[0]} rows × {rows.shape[1]} tokens, batch {args.batch_size}, "
            f"median of {args.repeats}\n",
            "Calibration wall time of each method as a ratio to one plain forward pass over the same tokens:\n",
            *calibration_table(model, rows, args),
            "\nPruned (reap, ratio 0.5) vs full model:\n",
            *generation_table(model, rows, args),
        ]
    )
    if args.write:
        write_section("speed-synthetic" if args.synthetic else "speed-fixture", body)
    print(body)


if __name__ == "__main__":
    main()
