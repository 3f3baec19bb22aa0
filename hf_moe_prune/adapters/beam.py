"""beam: router `gate`; fused routed experts `experts`; `e_score_correction_bias` sliced with the router."""

from .base import ADAPTERS, MoEAdapter

ADAPTERS.add("beam", MoEAdapter("beam", "BeamMoE"))
