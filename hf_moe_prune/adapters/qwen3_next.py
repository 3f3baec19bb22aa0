"""qwen3_next: router `gate`; fused routed experts `experts`; shared `shared_expert`, `shared_expert_gate` left
alone.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "qwen3_next",
    MoEAdapter(
        "qwen3_next",
        "Qwen3NextSparseMoeBlock",
        shared=("shared_expert", "shared_expert_gate"),
    ),
)
