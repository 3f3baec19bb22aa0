"""qwen3_vl_moe_text: the text decoder of Qwen3-VL-MoE (`qwen3_vl_moe`); router `gate`, fused routed experts
`experts`. Only the decoder's experts are pruned; the vision tower and the rest of the model are left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "qwen3_vl_moe_text",
    MoEAdapter("qwen3_vl_moe_text", "Qwen3VLMoeTextSparseMoeBlock", count_keys=("num_experts", "num_local_experts")),
)
