"""cohere2_moe: router `gate`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("cohere2_moe", MoEAdapter("cohere2_moe", "Cohere2MoeSparseMoeBlock"))
