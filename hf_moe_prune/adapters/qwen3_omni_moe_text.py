"""qwen3_omni_moe_text: the text decoder of the Qwen3-Omni thinker (`qwen3_omni_moe_thinker`, loaded as
`Qwen3OmniMoeThinkerForConditionalGeneration`); softmax top-k router `gate` (optionally renormalized); fused routed
experts `experts`; no shared expert; dense layers from `mlp_only_layers`/`decoder_sparse_step` have no MoE block. Only
the decoder's experts are pruned; the audio and vision towers are left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "qwen3_omni_moe_text",
    MoEAdapter(
        "qwen3_omni_moe_text",
        "Qwen3OmniMoeThinkerTextSparseMoeBlock",
        count_keys=("num_experts", "num_local_experts"),
    ),
)
