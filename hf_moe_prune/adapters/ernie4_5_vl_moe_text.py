"""ernie4_5_vl_moe_text: the text decoder of ERNIE-4.5-VL-MoE (`ernie4_5_vl_moe`).

Each MoE layer (`Ernie4_5_VLMoeMoeBlock`) holds two modality-isolated expert groups, `text_moe` (text tokens) and
`vision_moe` (image/video tokens), each a `Ernie4_5_VLMoeSparseMoeBlock` with its own softmax router `gate` (score
correction bias in `gate.moe_statics`, expert axis 1) and fused experts `experts`; both are found as blocks. They share
the config's expert count and the layer's router-logits width, so every group keeps the same number of experts
(`same_count`), and the outer block's `num_experts` (the width of its router-logits buffer) follows the kept count
(`parent_count_attrs`). The shared `shared_experts` sit beside them in the outer block and are left alone; the
vision tower is left alone.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "ernie4_5_vl_moe_text",
    MoEAdapter(
        "ernie4_5_vl_moe_text",
        "Ernie4_5_VLMoeSparseMoeBlock",
        extra_tensors=("gate.moe_statics.e_score_correction_bias:1",),
        count_keys=("moe_num_experts", "num_experts"),
        same_count=True,
        parent_count_attrs=("num_experts",),
    ),
)
