"""afmoe: router `router` (logits from `gate`); fused routed experts `experts`; shared `shared_experts` left alone.

Router logits from `router.gate`, a per-expert selection bias `expert_bias` on the block.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "afmoe",
    MoEAdapter(
        "afmoe",
        "AfmoeSparseMoeBlock",
        router="router",
        router_weight="gate.weight",
        extra_tensors=("expert_bias",),
        shared=("shared_experts",),
    ),
)
