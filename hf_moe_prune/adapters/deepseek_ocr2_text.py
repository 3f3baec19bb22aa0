"""deepseek_ocr2_text: the text decoder of DeepSeek-OCR-2 (`deepseek_ocr2`), routed as deepseek_v2 (softmax top-k
router `gate`, greedy or group-limited, `routed_scaling_factor`); fused routed experts `experts`; shared
`shared_experts` left alone; dense layers from `mlp_layer_types` have no MoE block. Only the decoder's experts are
pruned; the SAM + encoder vision tower and the projector are left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "deepseek_ocr2_text",
    MoEAdapter(
        "deepseek_ocr2_text",
        "DeepseekOcr2TextMoe",
        count_keys=("n_routed_experts", "num_experts"),
        shared=("shared_experts",),
    ),
)
