"""hy_v3: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "hy_v3",
    MoEAdapter(
        "hy_v3",
        "HYV3MoE",
        extra_tensors=("e_score_correction_bias",),
        count_keys=("num_experts", "num_local_experts"),
        shared=("shared_experts",),
    ),
)
