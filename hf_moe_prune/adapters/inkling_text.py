"""inkling_text: sigmoid router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.

The router weight holds E + `n_shared_experts` rows: the trailing ones score the shared experts, whose gates come out
of one softmax with the chosen routed experts' (the shared experts act as a sink), so they are kept when experts are
sliced and never masked.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "inkling_text",
    MoEAdapter(
        "inkling_text",
        "InklingMoE",
        count_keys=("n_routed_experts", "num_local_experts"),
        shared=("shared_experts",),
        trailing_rows="n_shared_experts",
        count_attrs=("num_experts", "n_total_experts"),
    ),
)
