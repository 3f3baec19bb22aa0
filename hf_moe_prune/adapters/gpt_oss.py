"""gpt_oss: router `router`; fused routed experts `experts`.

Router with a bias; top-k of the biased logits, softmax over the selected; transposed gate/up-interleaved fused
experts with biases.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "gpt_oss",
    MoEAdapter(
        "gpt_oss",
        "GptOssMLP",
        router="router",
        count_keys=("num_experts", "num_local_experts"),
    ),
)
