"""Expert-neuron pruning (TENP) against whole-expert pruning at the same parameter budget, and the speed of the
width-grouped expert layout against the stock fused layout at equal parameters.

    python benchmarks/neurons.py quality [--write]   # every trained fixture, 25% and 40% routed-expert sparsity
    python benchmarks/neurons.py quality --fixtures olmoe --only trapezoid flat --repeats 1   # just those rows
    python benchmarks/neurons.py layout [--write]    # one synthetic MoE layer: width-grouped vs stock, per kernel

Quality: each configuration prunes the fixture calibrated on the mixed domains and is evaluated on held-out text
(perplexity, KL and top-1 agreement against the unpruned model), with its routed-expert sparsity (what was actually
removed), total parameters, weight memory, forward throughput (tokens/s over 8 × 256-token rows) and greedy generation
throughput (batch 1, 32 new tokens); timings are medians over --repeats runs. Whole-expert pruning cannot always hit
the budget to the expert (16 or 32 experts per layer, in groups of 8 on deepseek_v3): where the uniform counts miss
total − floor(ratio × total), the global allocation keeps exactly that many; the sparsity column says what each row
removed.

Layout: a Qwen3-MoE experts layer (hidden 1024, 64 experts of 512 neurons, top-8) narrowed the way TENP's trapezoid
narrows it (a quarter of the experts whole, the rest at half width) is timed against the stock fused module whose
uniform width gives exactly the same parameter count, for prefill (2048 tokens) and decode (8 tokens), per experts
implementation.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.allocation import keep_counts, total_budget
from hf_moe_prune.pipeline.evaluation import evaluate
from hf_moe_prune.reshape.grouped import prune_neurons
from hf_moe_prune.testing import DOMAINS, FIXTURES, fixture_path, fixture_texts, mixed_texts

try:
    from _results import median_seconds, write_section
except ImportError:  # run as a module
    from benchmarks._results import median_seconds, write_section


# name -> MoEPruneConfig keyword arguments (ratio added per row)
CONFIGS = {
    "reap, whole experts": {"method": "reap", "unit": "expert"},
    "reap + fisher, whole experts": {"method": "reap", "unit": "expert", "compensation": "fisher"},
    "tenp (trapezoid)": {"method": "tenp", "allocation": "trapezoid"},
    "tenp, flat schedule": {"method": "tenp", "allocation": "uniform"},
    "tenp + drop 1/8 experts": {"method": "tenp", "allocation": "trapezoid", "method_kwargs": {"drop_experts": 0.125}},
    "reap ranking, neurons (uniform)": {"method": "reap", "unit": "neuron", "allocation": "uniform"},
}


def _routed(model) -> int:
    return sum(p.numel() for b in find_blocks(model) for p in b.experts.parameters())


def _throughput(model, tokenizer, repeats: int) -> tuple[float, float]:
    rows = torch.randint(5, len(tokenizer), (8, 256), generator=torch.Generator().manual_seed(0))
    prompt = rows[:1, :16]

    def forward():
        with torch.no_grad():
            model(input_ids=rows, use_cache=False)

    def generate():
        model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)

    return rows.numel() / median_seconds(forward, repeats), 32 / median_seconds(generate, repeats)


def _row(context, label, target, model, result) -> None:
    tokenizer, routed, lines, repeats = context
    params = sum(p.numel() for p in model.parameters())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    forward, generate = _throughput(model, tokenizer, repeats)
    cells = " | ".join(f"{result.domains[d].perplexity:.2f}" for d in DOMAINS)
    sparsity = 1 - _routed(model) / routed
    kl = f"{result.overall.kl:.4f} | {result.overall.top1_agreement:.3f}" if result.overall.kl else "0 | 1.000"
    line = (
        f"| {label} | {target} | {sparsity:.1%} | {params:,} | {megabytes:.2f} | {cells} | "
        f"{result.overall.perplexity:.2f} | {kl} | {forward:,.0f} | {generate:.1f} |"
    )
    print(line, flush=True)
    lines.append(line)


def _expert_allocation(model, ratio: float) -> str:
    """`uniform` where every layer removing floor(ratio × E) experts removes exactly floor(ratio × total), else
    `global`, unless expert groups (deepseek_v3: counts in steps of 4) cannot reach that total either."""
    blocks, config = find_blocks(model), MoEPruneConfig(ratio=ratio)
    budget = total_budget(blocks, config)
    if sum(keep_counts(blocks, config).values()) == budget or budget % math.lcm(*(b.groups[0] for b in blocks)):
        return "uniform"
    return "global"


def quality(args) -> str:
    sections = []
    for name in args.fixtures:
        path = fixture_path(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        reference = AutoModelForCausalLM.from_pretrained(path).eval()
        routed = _routed(reference)
        eval_texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
        kwargs = {"seq_len": 256, "max_rows": args.eval_rows, "progress": False}
        lines = [
            "| configuration | target | routed sparsity | params | weights MB | "
            + " | ".join(f"ppl {d}" for d in DOMAINS)
            + " | ppl all | KL | top-1 | fwd tok/s | gen tok/s |",
            "|" + "---|" * (len(DOMAINS) + 10),
        ]

        context = (tokenizer, routed, lines, args.repeats)
        _row(context, "full model", "—", reference, evaluate(reference, tokenizer, eval_texts, **kwargs))
        for ratio in args.ratios:
            for label, options in CONFIGS.items():
                if args.only and not any(part.lower() in label.lower() for part in args.only):
                    continue
                options = dict(options)
                if options.get("unit") == "expert" and _expert_allocation(reference, ratio) == "global":
                    options["allocation"] = "global"  # uniform counts cannot express this budget; global can
                    label = label.replace("whole experts", "whole experts (global)")
                model = copy.deepcopy(reference)
                config = MoEPruneConfig(
                    ratio=ratio, calibration=mixed_texts(), num_samples=args.num_samples, seq_len=256, **options
                )
                hf_moe_prune.prune(model, config, tokenizer=tokenizer, progress=False)
                result = evaluate(model, tokenizer, eval_texts, reference=reference, **kwargs)
                _row(context, label, f"{ratio:.0%}", model, result)
        sections.append(f"#### Fixture `{name}`\n\n" + "\n".join(lines))
    return (
        f"Calibration: mixed domains, {args.num_samples} rows × 256 tokens; evaluation: held-out text, up to "
        f"{args.eval_rows} rows × 256 tokens per domain; timings: median of {args.repeats}.\n\n"
        + "\n\n".join(sections)
    )


def _experts(width: int, hidden: int, num_experts: int, implementation: str):
    config = AutoConfig.for_model(
        "qwen3_moe", hidden_size=hidden, moe_intermediate_size=width, num_experts=num_experts, num_experts_per_tok=8
    )
    config._experts_implementation = implementation
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    torch.manual_seed(0)
    experts = Qwen3MoeExperts(config)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.02)
    return experts.eval()


def layout(args) -> str:
    hidden, num_experts, width, whole = 1024, 64, 512, 16
    narrow = width // 2
    equal = (whole * width + (num_experts - whole) * narrow) // num_experts  # stock width with the same parameters
    lines = [
        f"Experts layer: hidden {hidden}, {num_experts} experts, top-8. Width-grouped: {whole} experts × {width} + "
        f"{num_experts - whole} × {narrow} neurons; stock at equal parameters: {num_experts} × {equal} "
        f"(both {num_experts * equal * hidden * 3 / 1e6:.1f} M parameters); stock full width {width} for reference. "
        f"Median of {args.repeats} runs; ratio = width-grouped / stock-equal (below 1: faster).",
        "",
        "| implementation | tokens | stock full ms | stock equal-params ms | width-grouped ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for implementation in args.implementations:
        full = _experts(width, hidden, num_experts, implementation)
        stock = _experts(equal, hidden, num_experts, implementation)
        grouped = prune_neurons(full, {e: list(range(narrow)) for e in range(whole, num_experts)})
        assert sum(p.numel() for p in grouped.parameters()) == sum(p.numel() for p in stock.parameters())
        for tokens in args.tokens:
            if implementation == "batched_mm" and tokens > 64:
                # batched_mm gathers one weight copy per (token, slot): 2048 tokens x top-8 would need ~70 GB.
                lines.append(f"| {implementation} | {tokens} | not run: a weight copy per (token, slot) | | | |")
                continue
            generator = torch.Generator().manual_seed(tokens)
            x = torch.randn(tokens, hidden, generator=generator)
            logits = torch.randn(tokens, num_experts, generator=generator)
            weights, index = torch.topk(logits.softmax(-1), 8, dim=-1)
            times = {}
            for label, module in (("full", full), ("stock", stock), ("grouped", grouped)):
                with torch.no_grad():
                    call = functools.partial(module, x, index, weights)
                    times[label] = median_seconds(call, args.repeats) * 1e3
            line = (
                f"| {implementation} | {tokens} | {times['full']:.2f} | {times['stock']:.2f} | "
                f"{times['grouped']:.2f} | {times['grouped'] / times['stock']:.2f} |"
            )
            print(line, flush=True)
            lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["quality", "layout"])
    parser.add_argument("--fixtures", nargs="+", default=list(FIXTURES))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.4])
    parser.add_argument("--only", nargs="+", help="quality: only the configurations whose label contains one of these")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--implementations", nargs="+", default=["eager", "grouped_mm", "batched_mm"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[2048, 8])
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    body = quality(args) if args.what == "quality" else layout(args)
    if args.write:
        write_section(f"neurons-{args.what}", body)
    print(body)


if __name__ == "__main__":
    main()
