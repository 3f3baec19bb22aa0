"""What pruning a real MoE model needs: sizes, memory per mode, statistics file and calibration cost, computed from
each model's architecture on the meta device (no weights, no download, no forward pass).

    python benchmarks/real_models.py [--ratios 0.25 0.5] [--num-samples 128] [--seq-len 512] [--batch-size 8]

Each model is built with `AutoModelForCausalLM.from_config` under `accelerate.init_empty_weights(include_buffers=True)`
and `torch.device("meta")` from its published config values (the keys that set parameter shapes, hard-coded
below). The library's own accounting gives the rest: `hf_moe_prune.find_blocks` (MoE blocks, experts, top-k,
groups), the uniform keep counts of `hf_moe_prune.allocation.budget.keep_counts` (ratio = share of routed experts
removed) and `hf_moe_prune.reshape.slice_block` applied to the meta skeleton, whose parameters are then counted.
Three kinds of number come out, and the table says which is which:

* exact (from the architecture): parameters, bf16 bytes, statistics file size, FLOPs, bytes read;
* measured elsewhere and applied as a ratio (`benchmarks/RESULTS.md` sections `memory` and `speed-synthetic`): the
  full-load peak (5.40 GiB for a 2.31 GiB checkpoint) and the 2-core CPU calibration throughput;
* modelled: the streaming peak as pruned model + one full-width decoder layer + the calibration hidden states, checked
  against the `memory` measurement at the end (the script prints both).

RESULTS.md writes GiB as "GB" (`benchmarks/memory.py` divides bytes by 2**30); this script prints GiB.
"""

from __future__ import annotations

import argparse
import math

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging

from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.allocation.budget import keep_counts
from hf_moe_prune.reshape import slice_block

GIB = 2**30
BF16 = 2

# Published config.json values of each model (the keys that set parameter shapes; rope settings, which do not, are
# left at the class defaults). A data table, kept one model to a few lines.
# fmt: off
MODELS = {
    "Qwen3-30B-A3B": ("qwen3_moe", dict(
        hidden_size=2048, num_hidden_layers=48, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
        intermediate_size=6144, vocab_size=151936, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        max_position_embeddings=40960, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        tie_word_embeddings=False)),
    "OLMoE-1B-7B-0924": ("olmoe", dict(
        hidden_size=2048, num_hidden_layers=16, num_experts=64, num_experts_per_tok=8, intermediate_size=1024,
        vocab_size=50304, num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
        norm_topk_prob=False, tie_word_embeddings=False)),
    "Mixtral-8x7B-v0.1": ("mixtral", dict(
        hidden_size=4096, num_hidden_layers=32, num_local_experts=8, num_experts_per_tok=2, intermediate_size=14336,
        vocab_size=32000, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        tie_word_embeddings=False)),
    "DeepSeek-V3 (671B)": ("deepseek_v3", dict(
        hidden_size=7168, num_hidden_layers=61, first_k_dense_replace=3, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, moe_intermediate_size=2048, intermediate_size=18432, vocab_size=129280,
        num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, n_group=8, topk_group=4, routed_scaling_factor=2.5,
        norm_topk_prob=True, max_position_embeddings=163840, tie_word_embeddings=False)),
}

# The synthetic checkpoint of RESULTS.md `memory` (benchmarks/memory.py `write_checkpoint`), pruned to 16 of 64
# experts (ratio 0.75) with 32 × 256 calibration tokens, and what that run measured (GiB, seconds).
MEMORY_SHAPE = ("qwen3_moe", dict(
    vocab_size=4096, hidden_size=768, intermediate_size=1536, moe_intermediate_size=512, num_hidden_layers=16,
    num_attention_heads=12, num_key_value_heads=4, head_dim=64, num_experts=64, num_experts_per_tok=4,
    max_position_embeddings=512))
MEMORY_MEASURED = dict(ratio=0.75, rows=32, seq_len=256, disk=2.31, pruned=0.62, streaming_peak=0.74, full_peak=5.40,
                       streaming_s=16.2, full_s=13.6)
# The synthetic model of RESULTS.md `speed-synthetic` (benchmarks/speed.py `_load`, float32, 2 torch threads): one
# plain forward over 32 × 256 tokens took 2.084 s (eager experts), REAP's calibration pass 1.13x that.
SPEED_SHAPE = ("qwen3_moe", dict(
    vocab_size=4096, hidden_size=512, intermediate_size=1024, moe_intermediate_size=256, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_experts=64, num_experts_per_tok=4,
    norm_topk_prob=True))
SPEED_MEASURED = dict(tokens=32 * 256, forward_s=2.084, reap_ratio=1.13)
# fmt: on


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _balanced(num: int, keep: int, n_group: int) -> list[int]:
    """The first `keep / n_group` experts of every group (any kept set of that size has the same parameter count)."""
    size, per = num // n_group, keep // n_group
    return [g * size + i for g in range(n_group) for i in range(per)]


def account(model_type: str, values: dict, ratios: list[float]) -> dict:
    """Parameter accounting of one architecture: totals, per-token active parameters, per-ratio pruned sizes."""
    config = AutoConfig.for_model(model_type, **values)
    # include_buffers patches torch.empty & co. too: the fused expert tensors are created with torch.empty before
    # they are registered, which would otherwise allocate them (30 GB for one DeepSeek-V3 layer) on the CPU first
    with init_empty_weights(include_buffers=True), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = find_blocks(model)
    total = _count(model)
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    layers = model.model.layers
    layer_params = [_count(layer) for layer in layers]
    routed = sum(p.numel() for b in blocks for _, p, _ in b.expert_weights())
    inactive = sum(
        (b.num_experts - b.top_k) * sum(p.numel() for _, p, _ in b.expert_weights()) // b.num_experts for b in blocks
    )
    attention = layers[-1].self_attn
    text = model.config
    qk_dim = getattr(text, "qk_head_dim", None) or getattr(attention, "head_dim", None)
    v_dim = getattr(text, "v_head_dim", None) or qk_dim
    info = {
        "model_type": model_type,
        "total": total,
        "embed": embed,
        "head": head,
        "non_layer": total - sum(layer_params),
        "largest_layer": max(layer_params),
        "moe_layers": len(blocks),
        "layers": len(layers),
        "experts": blocks[0].num_experts,
        "top_k": blocks[0].top_k,
        "groups": blocks[0].groups,
        "routed": routed,
        # per token, without the embedding lookup and the LM head (RESULTS `speed-*` time the forward with one logit)
        "active": total - embed - head - inactive,
        "hidden": text.hidden_size,
        "width": int(values.get("moe_intermediate_size") or values["intermediate_size"]),
        "attention": (text.num_attention_heads, qk_dim, v_dim),
        "pruned": {},
    }
    # every ratio's counts from the unsliced blocks, then the skeleton is sliced down ratio by ratio (ascending)
    plans = {r: keep_counts(blocks, MoEPruneConfig("reap", r, allocation="uniform")) for r in sorted(ratios)}
    done: dict[str, int] = {b.name: b.num_experts for b in blocks}
    for ratio, counts in plans.items():
        for b in blocks:
            slice_block(b, _balanced(done[b.name], counts[b.name], b.groups[0]))
            done[b.name] = counts[b.name]
        moe = sum(_count(b.module) for b in blocks)  # routed experts + routers + shared experts: what healing trains
        routed_now = sum(p.numel() for b in blocks for _, p, _ in b.expert_weights())
        info["pruned"][ratio] = {
            "kept": sorted(set(counts.values())),
            "params": _count(model),
            "moe_params": moe,
            "routed": routed_now,
        }
    return info


def activations(info: dict, rows: int, seq_len: int) -> int:
    """Bytes of the calibration hidden states streaming holds: every row's input and output of the current layer."""
    return 2 * rows * seq_len * info["hidden"] * BF16


def streaming_peak(info: dict, ratio: float, rows: int, seq_len: int) -> int:
    """Modelled streaming peak: the pruned model, one full-width decoder layer, the calibration hidden states."""
    return (info["pruned"][ratio]["params"] + info["largest_layer"]) * BF16 + activations(info, rows, seq_len)


def statistics_bytes(info: dict, rows: int, seq_len: int, eval_fraction: float = 0.1) -> int:
    """`statistics.safetensors` of `hf_moe_prune.calibrate`: float64 sums per MoE block (5 per-expert statistics,
    2 per-neuron `[E, I]`, 3 pairwise `[E, E]`) and the held-out token ids (int64); the JSON beside it not counted."""
    e, i = info["experts"], info["width"]
    held = min(max(1, round(eval_fraction * rows)), rows - 1)
    return info["moe_layers"] * (5 * e + 2 * e * i + 3 * e * e) * 8 + held * seq_len * 8


def flops_per_token(info: dict, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per active weight, plus attention scores at the mean causal context."""
    heads, qk, v = info["attention"]
    return 2 * info["active"] + info["layers"] * 2 * (seq_len + 1) / 2 * heads * (qk + v)


def cpu_seconds(info: dict, speed: dict, tokens: int) -> float:
    """REAP's calibration pass on the RESULTS `speed-synthetic` machine, scaled by active parameters per token."""
    per_token = SPEED_MEASURED["forward_s"] * SPEED_MEASURED["reap_ratio"] / SPEED_MEASURED["tokens"]
    return per_token * tokens * info["active"] / speed["active"]


def _g(n_bytes: float) -> str:
    return f"{n_bytes / GIB:,.1f}" if n_bytes >= 10 * GIB else f"{n_bytes / GIB:.2f}"


def _b(params: float) -> str:
    return f"{params / 1e9:,.2f} B"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def tables(results: dict, speed: dict, args) -> str:
    rows, seq, tokens = args.num_samples, args.seq_len, args.num_samples * args.seq_len
    batches = math.ceil(rows / args.batch_size)
    scoring = rows - min(max(1, round(0.1 * rows)), rows - 1)  # eval_fraction 0.1 of the rows is held out
    out = [
        "Architecture (exact, from the meta skeleton; B = 10^9 parameters, sizes in GiB of bf16 weights):",
        "",
        "| model | type | params | active/token (all / without embedding + LM head) | MoE layers × routed experts "
        "(top-k, groups) | routed-expert share | bf16 weights |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        groups = f", {r['groups'][0]} groups / {r['groups'][1]} picked" if r["groups"][0] > 1 else ""
        out.append(
            f"| {name} | {r['model_type']} | {_b(r['total'])} | {_b(r['active'] + r['embed'] + r['head'])} / "
            f"{_b(r['active'])} | {r['moe_layers']} of {r['layers']} × {r['experts']} (top-{r['top_k']}{groups}) "
            f"| {r['routed'] / r['total']:.1%} | {_g(r['total'] * BF16)} |"
        )
    out += [
        "",
        f"Memory per mode (GiB; calibration {rows} rows × {seq} tokens, batch {args.batch_size}):",
        "",
        "| model | ratio | experts kept / layer | params after (routed-expert share) | bf16 after | full load + "
        "prune: weights (exact) / CPU peak (×2.34, `memory`) | streaming peak: modelled / ×1.19 pruned (`memory`) | "
        "offload: device floor / disk | healing extra (full, default `train`) | statistics file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    full_ratio = MEMORY_MEASURED["full_peak"] / MEMORY_MEASURED["disk"]
    for name, r in results.items():
        floor = (r["non_layer"] + r["largest_layer"]) * BF16 + activations(r, args.batch_size, seq) // 2
        for ratio, p in r["pruned"].items():
            healing = 18 * p["moe_params"]  # bf16 grad + fp32 grad copy, master and two AdamW moments
            out.append(
                f"| {name} | {ratio} | {'/'.join(map(str, p['kept']))} of {r['experts']} | {_b(p['params'])}, "
                f"{p['params'] / r['total']:.0%} ({p['routed'] / p['params']:.0%}) | {_g(p['params'] * BF16)} "
                f"| {_g(r['total'] * BF16)} / "
                f"{_g(r['total'] * BF16 * full_ratio)} | {_g(streaming_peak(r, ratio, rows, seq))} / "
                f"{_g(p['params'] * BF16 * MEMORY_MEASURED['streaming_peak'] / MEMORY_MEASURED['pruned'])} "
                f"| ≥ {_g(floor)} / {_g(r['total'] * BF16)} | +{_g(healing)} "
                f"| {statistics_bytes(r, rows, seq) / 2**20:.1f} MiB |"
            )
    out += [
        "",
        f"Calibration cost ({tokens:,} tokens; FLOPs and bytes exact, CPU time an estimate by scaling):",
        "",
        "| model | forward FLOPs / token | one calibration pass | CPU estimate, REAP's pass (2 cores, scaled from "
        "`speed-synthetic`) | routed tokens per expert and layer (mean) | streaming reads (checkpoint + kept "
        f"experts, at 0.5) | offload: weights read per pass (all layers offloaded, once per batch: {batches}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        per_token = flops_per_token(r, seq)
        half = r["pruned"].get(0.5, next(iter(r["pruned"].values())))
        layer_bytes = (r["total"] - r["non_layer"]) * BF16
        out.append(
            f"| {name} | {per_token / 1e9:.2f} GFLOP | {per_token * tokens / 1e15:.2f} PFLOP "
            f"| {_duration(cpu_seconds(r, speed, tokens))} | {scoring * seq * r['top_k'] / r['experts']:,.0f} "
            f"| {_g((r['total'] + half['params']) * BF16)} GiB "
            f"| {_g(batches * layer_bytes)} GiB |"
        )
    return "\n".join(out)


def check(speed: dict) -> str:
    """The accounting against what RESULTS.md `memory` measured on its synthetic checkpoint."""
    m = MEMORY_MEASURED
    shape = account(*MEMORY_SHAPE, [m["ratio"]])
    pruned = shape["pruned"][m["ratio"]]["params"] * BF16
    if round(pruned / GIB, 2) != m["pruned"]:
        raise SystemExit(f"accounting gives a {pruned / GIB:.3f} GiB pruned model, `memory` measured {m['pruned']}")
    modelled = streaming_peak(shape, m["ratio"], m["rows"], m["seq_len"])
    estimate = cpu_seconds(shape, speed, m["rows"] * m["seq_len"])
    return "\n".join(
        [
            "Check against RESULTS.md `memory` (synthetic qwen3_moe, hidden 768, 16 layers × 64 experts of 512, "
            f"ratio {m['ratio']}: {'/'.join(map(str, shape['pruned'][m['ratio']]['kept']))} experts kept):",
            "",
            "| quantity | this script | measured (`memory`) |",
            "|---|---:|---:|",
            f"| checkpoint, bf16 weights | {shape['total'] * BF16 / GIB:.3f} GiB (exact) | {m['disk']} GiB on disk |",
            f"| pruned model, bf16 weights | {pruned / GIB:.3f} GiB (exact) | {m['pruned']} GiB |",
            f"| streaming peak above imports | {_g(modelled)} GiB (modelled: pruned + one layer "
            f"{_g(shape['largest_layer'] * BF16)} + hidden states {_g(activations(shape, m['rows'], m['seq_len']))}) "
            f"| {m['streaming_peak']} GiB |",
            f"| full load + prune peak above imports | {_g(shape['total'] * BF16)} GiB of weights | "
            f"{m['full_peak']:.2f} GiB ({m['full_peak'] / m['disk']:.2f}x the checkpoint, "
            f"{m['full_peak'] / m['pruned']:.1f}x the pruned model) |",
            f"| REAP calibration, 32 × 256 tokens | {estimate:.1f} s of compute (scaled from `speed-synthetic`, "
            f"float32, eager) | streaming {m['streaming_s']} s, full load + prune {m['full_s']} s wall (bf16, "
            "including reading the checkpoint) |",
            "",
            f"Scaling reference (`speed-synthetic`): {speed['active'] / 1e6:.2f} M active parameters per token "
            f"(without embedding and LM head), {SPEED_MEASURED['tokens']} tokens in "
            f"{SPEED_MEASURED['forward_s']} s × {SPEED_MEASURED['reap_ratio']} (REAP, eager experts).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    logging.set_verbosity_error()
    speed = account(*SPEED_SHAPE, [0.5])
    results = {name: account(model_type, values, args.ratios) for name, (model_type, values) in MODELS.items()}
    print(tables(results, speed, args))
    print()
    print(check(speed))


if __name__ == "__main__":
    main()
