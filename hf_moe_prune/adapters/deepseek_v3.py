"""deepseek_v3: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.

Sigmoid scores plus `e_score_correction_bias` (selection only), group-limited top-k over `n_group` groups,
`routed_scaling_factor`; `first_k_dense_replace` dense layers have no MoE block.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "deepseek_v3",
    MoEAdapter(
        "deepseek_v3",
        "DeepseekV3MoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
