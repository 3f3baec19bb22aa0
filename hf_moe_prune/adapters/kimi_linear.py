"""kimi_linear: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "kimi_linear",
    MoEAdapter(
        "kimi_linear",
        "KimiLinearMoE",
        count_keys=("num_experts", "num_local_experts"),
        shared=("shared_experts",),
    ),
)
