"""muse_spark_text: router `gate`; fused routed experts `experts`; `e_score_correction_bias` sliced with the router."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("muse_spark_text", MoEAdapter("muse_spark_text", "MuseSparkMoE", count_keys=("num_local_experts",)))
