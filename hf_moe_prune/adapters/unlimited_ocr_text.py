"""unlimited_ocr_text: the text decoder of Unlimited-OCR (`unlimited_ocr`), routed as deepseek_v2 (softmax top-k
router `gate`, greedy or group-limited, `routed_scaling_factor`); fused routed experts `experts`; shared
`shared_experts` left alone; dense layers from `mlp_layer_types` (or `first_k_dense_replace`) have no MoE block. Only
the decoder's experts are pruned; the SAM + CLIP vision tower and the projector are left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "unlimited_ocr_text",
    MoEAdapter(
        "unlimited_ocr_text",
        "UnlimitedOcrTextMoe",
        count_keys=("n_routed_experts", "num_experts"),
        shared=("shared_experts",),
    ),
)
