"""qwen4_exp_text: the text decoder of Qwen4-Exp (`qwen4_exp`, also loadable alone as `Qwen4ExpForCausalLM`); softmax
top-k router `gate` (optionally renormalized); fused routed experts `experts`; sigmoid-gated shared expert
`shared_expert`/`shared_expert_gate` left alone. Every layer (linear or indexed attention) has a MoE block. Only the
decoder's experts are pruned; the vision tower is left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "qwen4_exp_text",
    MoEAdapter(
        "qwen4_exp_text",
        "Qwen4ExpTextSparseMoeBlock",
        count_keys=("num_experts", "num_local_experts"),
        shared=("shared_expert", "shared_expert_gate"),
    ),
)
