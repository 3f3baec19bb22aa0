"""inkling2_loop_text: as inkling2_text (softmax top-k router `gate` with `e_score_correction_bias`, sliced; fused
experts); its decoder loops over the same layers, so each block's statistics add up over every pass."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "inkling2_loop_text",
    MoEAdapter(
        "inkling2_loop_text",
        "Inkling2LoopSparseMoeBlock",
        count_keys=("n_routed_experts", "num_local_experts"),
    ),
)
