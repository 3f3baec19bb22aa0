"""laguna: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("laguna", MoEAdapter("laguna", "LagunaSparseMoeBlock", shared=("shared_experts",)))
