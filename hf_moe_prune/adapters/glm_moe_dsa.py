"""glm_moe_dsa: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router. Its decoder layers hand the next one the sparse-attention indexer's
top-k indices beside the hidden states (`layer_state`: no streaming).
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "glm_moe_dsa",
    MoEAdapter(
        "glm_moe_dsa",
        "GlmMoeDsaMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
        layer_state=True,
    ),
)
