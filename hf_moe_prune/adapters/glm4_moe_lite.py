"""glm4_moe_lite: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "glm4_moe_lite",
    MoEAdapter(
        "glm4_moe_lite",
        "Glm4MoeLiteMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
