"""minimax_m2: router `gate`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "minimax_m2",
    MoEAdapter(
        "minimax_m2",
        "MiniMaxM2SparseMoeBlock",
        extra_tensors=("e_score_correction_bias",),
        count_keys=("num_experts", "num_local_experts"),
    ),
)
