"""The llm-compressor route for pruned checkpoints (its own environment, transformers 5.17): the experts are
quantized too, and the result reloads with stock transformers + compressed-tensors close to the unquantized model."""

import json
import sys
from pathlib import Path

import torch

from .conftest import load_reference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def test_llm_compressor_quantizes_the_pruned_experts(checkpoints, tmp_path):
    from quantize_experts_with_llm_compressor import quantize
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    source = checkpoints["qwen3_moe"]  # uniformly pruned by the main environment (stock checkpoint)
    out = tmp_path / "w4"
    quantize(str(source), str(out), bits=4, group_size=32)  # the fixture's experts are 64 neurons wide
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        keys = list(f.keys())
    assert any(".mlp.experts." in k and "weight_packed" in k for k in keys), keys[:20]  # the experts are 4-bit
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    before = sum(p.stat().st_size for p in Path(source).glob("*.safetensors"))
    assert size < 0.5 * before
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    quantized = AutoModelForCausalLM.from_pretrained(out).eval()
    assert "hf_moe_prune" not in sys.modules
    agreements = []
    for row in load_reference(source):  # teacher-forced on the PyTorch greedy continuation of each prompt
        ids = row["greedy"][None]
        with torch.no_grad():
            expected, got = reference(ids).logits[0], quantized(ids).logits[0]
        agreements.append((expected.argmax(-1) == got.argmax(-1)).float().mean().item())
    agreement = sum(agreements) / len(agreements)
    assert agreement >= 0.9, agreements  # measured 0.96-0.97 per prompt
    print(
        f"llm-compressor W4 g32: {before / 1e6:.2f} MB -> {size / 1e6:.2f} MB, top-1 agreement {agreement:.2f}",
        file=sys.stderr,
    )
