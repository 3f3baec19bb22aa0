"""Qwen1.5/Qwen2-MoE: softmax top-k router `gate` (no renormalization by default), sigmoid-gated shared expert."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "qwen2_moe",
    MoEAdapter("qwen2_moe", "Qwen2MoeSparseMoeBlock", shared=("shared_expert", "shared_expert_gate")),
)
