"""Quantize a pruned checkpoint's experts too, with llm-compressor (its own environment: it pins transformers).

bitsandbytes and torchao replace `nn.Linear` modules, so the fused 3-D expert tensors of transformers 5 stay in
floating point when they quantize. llm-compressor quantizes them (compressed-tensors format), and the result loads
with stock transformers plus `compressed-tensors`. Tested by `tests_optimum/test_llm_compressor.py` (run.sh builds
the environment: llmcompressor 0.14.0.1, transformers 5.17).

    # main environment: prune, uniformly, so that the checkpoint is stock
    hf-moe-prune prune MODEL --ratio 0.5 --output pruned/
    # llm-compressor environment (python -m venv llmc && llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1)
    llmc/bin/python examples/quantize_experts_with_llm_compressor.py pruned/ pruned-w4/ --bits 4 --group-size 128
"""

from __future__ import annotations

import argparse


def quantize(source: str, output: str, bits: int = 4, group_size: int = 128) -> None:
    """Round-to-nearest (data-free) `bits`-bit weights in groups of `group_size` for every linear layer and fused
    expert tensor, except the routers (`mlp.gate`) and the LM head, which stay in full precision."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size}
    recipe = QuantizationModifier(
        config_groups={"experts_and_linears": {"targets": ["Linear"], "weights": weights}},
        ignore=["lm_head", "re:.*mlp.gate$"],
    )
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(output, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args()
    quantize(args.source, args.output, args.bits, args.group_size)
