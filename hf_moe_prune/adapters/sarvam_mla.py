"""sarvam_mla: a config of its own that transformers builds with the DeepSeek-V3 classes (`DeepseekV3ForCausalLM`):
sigmoid router with `e_score_correction_bias` (sliced), group-limited routing rules, shared experts untouched, dense
first layers skipped. The count lives in `n_routed_experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "sarvam_mla",
    MoEAdapter("sarvam_mla", "DeepseekV3MoE", count_keys=("n_routed_experts",), shared=("shared_experts",)),
)
