"""gemma4_text: the text decoder of Gemma 4 MoE (`gemma4`). The router `router` and the fused experts `experts` sit on
the decoder layer itself, next to a dense MLP that always runs, so the block is `Gemma4TextDecoderLayer` (only layers
with `enable_moe_block` have them). Softmax top-k over the logits of `router.proj`, renormalized, then multiplied by
the learned `router.per_expert_scale` (sliced with the router) before the experts apply them."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "gemma4_text",
    MoEAdapter(
        "gemma4_text",
        "Gemma4TextDecoderLayer",
        router="router",
        router_weight="proj.weight",
        router_tensors=("per_expert_scale",),
        top_k_key="top_k_experts",
        standalone=False,
    ),
)
