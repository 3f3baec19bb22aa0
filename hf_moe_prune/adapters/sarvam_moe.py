"""sarvam_moe: a config of its own that transformers builds with the GLM-4-MoE classes (`Glm4MoeForCausalLM`): sigmoid
router with `e_score_correction_bias` (sliced), group-limited routing rules, shared experts untouched, dense first
layers skipped. The count lives in `n_routed_experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "sarvam_moe",
    MoEAdapter("sarvam_moe", "Glm4MoeMoE", count_keys=("n_routed_experts",), shared=("shared_experts",)),
)
