"""hy_v4_vl_text: the text decoder of Hy4-VL (`hy_v4_vl`), routed as hy_v4 (sigmoid router `gate` with a sliced
`e_score_correction_bias`, group-limited renormalized top-k, `routed_scaling_factor`); fused routed experts `experts`;
shared `shared_experts` left alone; dense layers from `mlp_layer_types` have no MoE block. Only the decoder's experts
are pruned; the vision tower is left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "hy_v4_vl_text",
    MoEAdapter(
        "hy_v4_vl_text",
        "HYV4VLMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
        layer_state=True,  # each decoder layer hands the next its sparse-attention top-k indices: no streaming
    ),
)
