"""ernie4_5_moe: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone.

The score-correction bias lives in `gate.moe_statics` with the expert axis on dim 1.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "ernie4_5_moe",
    MoEAdapter(
        "ernie4_5_moe",
        "Ernie4_5_MoeSparseMoeBlock",
        extra_tensors=("gate.moe_statics.e_score_correction_bias:1",),
        count_keys=("num_experts", "moe_num_experts"),
        shared=("shared_experts",),
    ),
)
