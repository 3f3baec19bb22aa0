"""longcat_flash: softmax router `router` (logits from `classifier`); fused routed experts `experts`;
`e_score_correction_bias` sliced with the router.

`zero_expert_num` zero-computation (identity) experts share the router with the E routed ones: trailing rows of the
classifier weight, of `e_score_correction_bias` and of the experts' `gate_up_proj` (not `down_proj`). They are kept,
never masked, and never counted as routed experts; their picks reach the experts module as indices >= E.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "longcat_flash",
    MoEAdapter(
        "longcat_flash",
        "LongcatFlashMoE",
        router="router",
        count_keys=("n_routed_experts", "num_local_experts"),
        router_weight="classifier.weight",
        trailing_rows="zero_expert_num",
        # router: `num_experts` (E), `n_routed_experts` (E + Z); experts: `num_routed_experts`, `total_experts`
        count_attrs=("num_experts", "n_routed_experts", "num_routed_experts", "total_experts"),
    ),
)
