"""step3p5: the text decoder of Step-3.7-Flash (`step3p7`, whose text config is `model_type="step3p5"`); sigmoid
router `gate` with a sliced `e_score_correction_bias`, renormalized top-k; fused routed experts `experts`; shared
`shared_experts` left alone; dense layers from `mlp_layer_types` have no MoE block. Only the decoder's experts are
pruned; the vision tower is left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "step3p5",
    MoEAdapter(
        "step3p5",
        "Step3p7SparseMoeBlock",
        count_keys=("n_routed_experts", "num_local_experts", "moe_num_experts"),
        shared=("shared_experts",),
    ),
)
