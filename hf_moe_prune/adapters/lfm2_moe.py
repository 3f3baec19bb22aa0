"""lfm2_moe: router `gate`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("lfm2_moe", MoEAdapter("lfm2_moe", "Lfm2MoeSparseMoeBlock", extra_tensors=("expert_bias",)))
