"""OLMoE: softmax top-k router `gate`, `norm_topk_prob` (False in released checkpoints), no shared expert."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("olmoe", MoEAdapter("olmoe", "OlmoeSparseMoeBlock", count_keys=("num_experts", "num_local_experts")))
