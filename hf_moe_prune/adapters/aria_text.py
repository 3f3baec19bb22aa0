"""aria_text: the text decoder of Aria (`aria`); top-k on the raw logits of router `router`, gates softmaxed over the
selected experts; fused experts stored transposed (`[E, in, out]`, expert dimension still first); shared
`shared_experts` left alone. Only the decoder's experts are pruned; the vision tower is left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "aria_text",
    MoEAdapter(
        "aria_text",
        "AriaTextMoELayer",
        router="router",
        count_keys=("moe_num_experts",),
        top_k_key="moe_topk",
        shared=("shared_experts",),
    ),
)
