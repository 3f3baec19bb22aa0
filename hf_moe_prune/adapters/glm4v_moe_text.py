"""glm4v_moe_text: the text decoder of GLM-4.5V/4.6V (`glm4v_moe`), routed as glm4_moe (sigmoid + sliced
`e_score_correction_bias`, group-limited top-k); shared `shared_experts` left alone. Only the decoder's experts are
pruned; the vision tower is left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "glm4v_moe_text",
    MoEAdapter(
        "glm4v_moe_text",
        "Glm4vMoeTextMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
