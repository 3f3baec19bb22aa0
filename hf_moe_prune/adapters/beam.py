"""beam: router `gate`; fused routed experts `experts`; `e_score_correction_bias` sliced with the router."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("beam", MoEAdapter("beam", "BeamMoE"))
