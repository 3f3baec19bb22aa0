"""Qwen3-MoE: softmax top-k router `gate`, fused experts, `norm_topk_prob` renormalization, no shared expert."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

# transformers >= 5 writes `num_local_experts`; 4.57 reads `num_experts` (and defaults to 128 without it).
ADAPTERS.add(
    "qwen3_moe", MoEAdapter("qwen3_moe", "Qwen3MoeSparseMoeBlock", count_keys=("num_experts", "num_local_experts"))
)
