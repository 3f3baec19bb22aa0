"""inkling2_text: router `gate`; fused routed experts `experts`; `e_score_correction_bias` sliced with the router."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "inkling2_text",
    MoEAdapter(
        "inkling2_text",
        "Inkling2SparseMoeBlock",
        count_keys=("num_local_experts", "n_routed_experts"),
    ),
)
