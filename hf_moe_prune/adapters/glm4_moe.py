"""glm4_moe: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "glm4_moe",
    MoEAdapter(
        "glm4_moe",
        "Glm4MoeMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
