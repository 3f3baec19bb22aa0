"""mistral_large4_text: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "mistral_large4_text",
    MoEAdapter(
        "mistral_large4_text",
        "MistralLarge4TextMoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
        layer_state=True,  # each decoder layer hands the next its sparse-attention top-k indices: no streaming
    ),
)
