"""qwen3_5_moe_text: router `gate`; fused routed experts `experts`; shared `shared_expert`, `shared_expert_gate`
left alone.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "qwen3_5_moe_text",
    MoEAdapter(
        "qwen3_5_moe_text",
        "Qwen3_5MoeSparseMoeBlock",
        shared=("shared_expert", "shared_expert_gate"),
    ),
)
