"""bailing_hybrid: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "bailing_hybrid",
    MoEAdapter(
        "bailing_hybrid",
        "BailingHybridMoE",
        count_keys=("num_experts", "num_local_experts"),
        shared=("shared_experts",),
    ),
)
