"""Prune and quantize in one `from_pretrained`: the same greedy tokens as pruning, saving and loading quantized, and a
saved result that stock transformers plus the quantizer reloads."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TorchAoConfig

from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.testing import fixture_path, mixed_texts

IDS = torch.randint(5, 4000, (1, 16), generator=torch.Generator().manual_seed(0))


def _quantizers():
    from torchao.quantization import Int8WeightOnlyConfig

    return {"bitsandbytes": BitsAndBytesConfig(load_in_8bit=True), "torchao": TorchAoConfig(Int8WeightOnlyConfig())}


def _greedy(model) -> list[int]:
    with torch.no_grad():
        return model.generate(IDS, max_new_tokens=8, do_sample=False)[0, -8:].tolist()


@pytest.mark.parametrize("name", ["bitsandbytes", "torchao"])
def test_prune_and_quantize_in_one_load(name, tmp_path, caplog):
    quantization = _quantizers()[name]
    request = MoEPruneConfig("reap", 0.5, calibration=mixed_texts(), num_samples=12, seq_len=64)
    one = AutoModelForCausalLM.from_pretrained(
        fixture_path("qwen3_moe"), pruning_config=request, quantization_config=quantization, device_map="cpu"
    )
    assert one.moe_pruning_plan.is_uniform and one.config.quantization_config.quant_method.value == name
    assert "fused routed experts" in caplog.text  # said: these quantizers leave 3-D expert tensors alone
    # the two-step route: prune, save, load the saved checkpoint quantized
    pruned = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=request)
    assert [b.kept for b in pruned.moe_pruning_plan.blocks] == [b.kept for b in one.moe_pruning_plan.blocks]
    pruned.save_pretrained(tmp_path / "pruned")
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", quantization_config=quantization, device_map="cpu")
    tokens = _greedy(one)
    assert tokens == _greedy(two)
    # the saved result reloads in a clean interpreter: stock transformers plus the quantizer, no hf_moe_prune
    one.save_pretrained(tmp_path / "quantized")
    config = json.loads((tmp_path / "quantized" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == name and config["moe_pruning"]["method"] == "reap"
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "quantized")!r}, device_map="cpu")
        ids = torch.tensor({IDS.tolist()!r})
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False)[0, -8:].tolist()
        assert "hf_moe_prune" not in sys.modules
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == tokens


def test_a_plan_that_needs_the_quantization_slot_is_refused_before_loading(monkeypatch):
    import hf_moe_prune.streaming as streaming

    def fail(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(streaming, "stream_prune", fail)
    for request, message in (
        (MoEPruneConfig("reap", 0.5, allocation="global", calibration=mixed_texts()), "allocation='global'"),
        (MoEPruneConfig("tenp", 0.4, calibration=mixed_texts()), "neuron pruning"),
    ):
        with pytest.raises(ValueError, match="quantization_config slot") as error:
            AutoModelForCausalLM.from_pretrained(
                fixture_path("qwen3_moe"), pruning_config=request, quantization_config=_quantizers()["torchao"]
            )
        assert message in str(error.value)
    # a method whose own default allocation is per-layer gets uniform, as with portable=True
    assert MoEPruneConfig("compel", 0.5, portable=True).allocation == "uniform"
