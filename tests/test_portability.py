"""`portable=True`: only plans that every consumer loads (stock transformers, vLLM, llama.cpp, Optimum, quantizers);
refused requests fail before calibration; non-portable plans say who will refuse them."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.testing import fixture_path, mixed_texts, tiny_model

SMALL = {"num_samples": 12, "seq_len": 64, "batch_size": 4, "eval_fraction": 0.25}
IDS = torch.randint(5, 4000, (1, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "tenp"}, "neuron pruning leaves experts of different widths"),
        ({"allocation": "global"}, "allocation='global' gives each layer its own count"),
        ({"allocation": "evolutionary"}, "allocation='evolutionary'"),
        ({"allocation": [4, 2, 4, 4], "ratio": None}, "differ between layers"),
    ],
)
def test_portable_refuses_per_layer_plans_at_config_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEPruneConfig(**{"ratio": 0.5, "portable": True, **kwargs})


def test_portable_turns_a_methods_per_layer_default_into_uniform():
    assert MoEPruneConfig("compel", 0.5).allocation == "outlier"
    assert MoEPruneConfig("compel", 0.5, portable=True).allocation == "uniform"
    assert MoEPruneConfig("diep", 0.5, portable=True).allocation == "uniform"
    assert MoEPruneConfig(allocation=[3, 3], portable=True).portable


def test_portable_is_refused_for_a_family_without_an_expert_count():
    with pytest.raises(ValueError, match="no routed-expert count"):
        hf_moe_prune.prune(tiny_model("jetmoe"), MoEPruneConfig(ratio=0.5, portable=True), progress=False)


def test_portable_auto_searches_uniform_plans_only(held_out_fixture):
    model, rows = held_out_fixture
    import copy

    pruned = copy.deepcopy(model)
    config = MoEPruneConfig("auto", 0.5, portable=True, calibration=rows, time_budget=600, **SMALL)
    plan = hf_moe_prune.prune(pruned, config, progress=False)
    assert plan.is_uniform and all(plan.loaders.values())
    assert {row["allocation"] for row in plan.search["candidates"]} == {"uniform"}


def test_non_portable_plans_warn_and_name_who_refuses_them(caplog):
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
    caplog.set_level(logging.WARNING)
    config = MoEPruneConfig("reap", 0.5, allocation="global", calibration=mixed_texts(), **SMALL)
    plan = hf_moe_prune.prune(model, config, progress=False)
    assert not plan.is_uniform and not plan.loaders["vLLM / SGLang"] and plan.loaders["Optimum OpenVINO"]
    assert "not portable (different numbers of experts per layer)" in caplog.text
    assert "llama.cpp (GGUF)" in caplog.text and "portable=True" in caplog.text


def test_portable_plans_reload_in_stock_transformers(tmp_path):
    """Every portable route (a named method, a gradient method, auto) gives a checkpoint a clean interpreter without
    hf_moe_prune loads, with the pruned model's logits."""
    expected = {}
    for method in ("reap", "compel"):
        model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
        config = MoEPruneConfig(method, 0.5, portable=True, calibration=mixed_texts(), **SMALL)
        plan = hf_moe_prune.prune(model, config, progress=False)
        assert plan.is_uniform
        model.save_pretrained(tmp_path / method)
        with torch.no_grad():
            expected[method] = model(input_ids=IDS).logits
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        out = {{}}
        for name in {sorted(expected)!r}:
            model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + name)
            with torch.no_grad():
                out[name] = model(input_ids=torch.tensor({IDS.tolist()!r})).logits.tolist()
        assert "hf_moe_prune" not in sys.modules
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, logits in expected.items():
        torch.testing.assert_close(torch.tensor(results[name]), logits, rtol=0, atol=1e-5)
