"""nemotron_h: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.

Relu² experts with `up_proj` only, latent projections around them.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "nemotron_h",
    MoEAdapter(
        "nemotron_h",
        "NemotronHMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
