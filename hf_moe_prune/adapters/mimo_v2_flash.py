"""mimo_v2_flash: router `gate`; fused routed experts `experts`; `e_score_correction_bias` sliced with the router."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "mimo_v2_flash",
    MoEAdapter(
        "mimo_v2_flash",
        "MiMoV2FlashMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
    ),
)
