"""deepseek_v2: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "deepseek_v2",
    MoEAdapter(
        "deepseek_v2",
        "DeepseekV2Moe",
        count_keys=("num_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
