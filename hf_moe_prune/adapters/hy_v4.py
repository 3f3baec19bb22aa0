"""hy_v4: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "hy_v4",
    MoEAdapter(
        "hy_v4",
        "HYV4MoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
        layer_state=True,  # each decoder layer hands the next its sparse-attention top-k indices: no streaming
    ),
)
