"""glm5_next_text: the text decoder of GLM-5.3 (`glm5_next`); sigmoid router `gate` with a sliced
`e_score_correction_bias` and group-limited top-k (as deepseek_v3), fused routed experts `experts`, shared
`shared_experts` left alone; dense layers from `mlp_layer_types` have no MoE block."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "glm5_next_text",
    MoEAdapter(
        "glm5_next_text",
        "Glm5NextTextMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
        layer_state=True,  # each decoder layer hands the next its sparse-attention top-k indices: no streaming
    ),
)
