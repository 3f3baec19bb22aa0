"""flint: router `gate`; fused routed experts `experts`; shared `shared_expert` left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("flint", MoEAdapter("flint", "FlintSparseMoeBlock", shared=("shared_expert",)))
