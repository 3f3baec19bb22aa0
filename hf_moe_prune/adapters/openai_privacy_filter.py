"""OpenAI privacy filter: a GPT-OSS-style token classifier whose MLP `OpenAIPrivacyFilterMLP` holds the router
`router` and fused experts; its own `num_experts` attribute is the top-k output multiplier, not the expert count
(slicing only rewrites attributes that hold the count)."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "openai_privacy_filter",
    MoEAdapter("openai_privacy_filter", "OpenAIPrivacyFilterMLP", router="router", count_keys=("num_local_experts",)),
)
