"""Expert-neuron pruning (TENP and `unit="neuron"`): equivalence with zeroing, identity, budget, reload, errors."""

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import ADAPTERS, MoEPruneConfig, find_blocks
from hf_moe_prune.reshape.grouped import WidthGroupedExperts, prune_neurons
from hf_moe_prune.reshape.neuron_layout import neuron_layout
from hf_moe_prune.testing import fixture_path, fixture_texts, tiny_model

ROWS = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(1))
# Experts without transformers' fused-layout description.
# Families whose experts do not describe a fused layout (neuron pruning refuses them with a clear error)
NO_LAYOUT = {"dbrx", "jetmoe", "llama4_text", "longcat_flash", "step3p5", "switch_transformers"}


def _neuron_families():
    return [family for family in ADAPTERS.names() if family not in NO_LAYOUT]


def _logits(model, ids=IDS):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _zero_pruned_neurons(model, plan):
    """The original model with the pruned neurons' down-projection columns zeroed: what neuron pruning must equal."""
    for block, block_plan in zip(find_blocks(model), plan.blocks):
        layout = neuron_layout(block.experts)
        with torch.no_grad():
            for expert, kept in (block_plan.neurons or {}).items():
                dropped = torch.ones(layout.width, dtype=torch.bool)
                dropped[kept] = False
                down = block.experts.down_proj[expert]
                if layout.transposed:
                    down[dropped, :] = 0
                else:
                    down[:, dropped] = 0
    return model


def _fixture_config(method="tenp", ratio=0.4, **kwargs):
    return MoEPruneConfig(
        method, ratio, calibration=fixture_texts("code", "calibration"), num_samples=8, seq_len=64, **kwargs
    )


@pytest.mark.parametrize("family", _neuron_families())
def test_neuron_pruning_equals_zeroing_and_reloads(family, tmp_path):
    model = tiny_model(family, router_scale=4.0)
    pruned = copy.deepcopy(model)
    config = MoEPruneConfig("tenp", 0.4, calibration=ROWS, method_kwargs={"multiple_of": 4})
    plan = hf_moe_prune.prune(pruned, config, progress=False)
    assert plan.unit == "neuron" and any(b.neurons for b in plan.blocks)
    assert all(b.num_kept == b.num_experts for b in plan.blocks)  # every expert stays reachable
    assert all(isinstance(b.experts, WidthGroupedExperts) for b in find_blocks(pruned))
    torch.testing.assert_close(_logits(pruned), _logits(_zero_pruned_neurons(model, plan)), rtol=1e-4, atol=1e-5)

    pruned.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    quantization = saved.get("quantization_config") or saved["text_config"]["quantization_config"]
    assert quantization["expert_widths"] == plan.expert_widths
    reloaded = type(pruned).from_pretrained(tmp_path / "out")
    widths = [b.experts.widths for b in find_blocks(reloaded)]
    assert widths == [b.widths or [b.intermediate_size] * b.num_kept for b in plan.blocks]
    torch.testing.assert_close(_logits(reloaded), _logits(pruned), rtol=1e-5, atol=1e-6)
    if hasattr(pruned, "generate") and hasattr(pruned(input_ids=IDS[:1, :4]), "logits"):
        out = pruned.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert out.shape[1] == 7


def test_keeping_every_neuron_is_the_identity():
    model = tiny_model("qwen3_moe")
    before = _logits(model)
    for block in find_blocks(model):
        width = neuron_layout(block.experts).width
        grouped = prune_neurons(block.experts, {e: list(range(width)) for e in range(block.num_experts)})
        assert len(grouped.groups) == 1 and grouped.widths == [width] * block.num_experts
        setattr(block.module, block.adapter.experts, grouped)
    torch.testing.assert_close(_logits(model), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_width_groups_run_every_experts_implementation(implementation):
    model = tiny_model("qwen3_moe")
    model.set_experts_implementation(implementation)
    reference = copy.deepcopy(model)
    block, ref_block = find_blocks(model)[0], find_blocks(reference)[0]
    kept = {0: [0, 1, 2, 3, 8, 9, 10, 11], 3: [4, 5, 6, 7], 5: list(range(8, 16))}
    block.module.experts = prune_neurons(block.experts, kept)
    with torch.no_grad():
        for expert, neurons in kept.items():
            dropped = torch.ones(16, dtype=torch.bool)
            dropped[neurons] = False
            ref_block.experts.down_proj[expert][:, dropped] = 0
    assert block.experts.groups[0].config._experts_implementation == implementation
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.25, 0.4])
@pytest.mark.parametrize("multiple_of", [1, 8])
def test_budget_is_met_exactly(ratio, multiple_of):
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), experts_implementation="eager")
    routed = sum(b.experts.gate_up_proj.numel() + b.experts.down_proj.numel() for b in find_blocks(model))
    config = _fixture_config(ratio=ratio, method_kwargs={"multiple_of": multiple_of})
    plan = hf_moe_prune.prune(model, config, progress=False)
    after = sum(sum(p.numel() for p in b.experts.parameters()) for b in find_blocks(model))
    per_neuron = 3 * model.config.hidden_size
    total_neurons = routed // per_neuron
    expected = multiple_of * math.floor(ratio * total_neurons / multiple_of)
    assert (routed - after) // per_neuron == expected and (routed - after) % per_neuron == 0
    assert plan.neuron_schedule["budget_neurons"] == expected
    assert plan.parameters["before"] - plan.parameters["after"] == routed - after
    assert all(w % multiple_of == 0 for widths in plan.expert_widths.values() for w in widths)


def test_tenp_defaults_to_the_flat_schedule():
    """The flat schedule measured better than the trapezoid on every trained fixture (`benchmarks/neurons.py`)."""
    assert MoEPruneConfig("tenp", 0.4).allocation == "uniform"
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
    plan = hf_moe_prune.prune(model, _fixture_config(), progress=False)
    assert plan.neuron_schedule["keep_whole"] == [0.0, 0.0]
    shallow, deep = plan.neuron_schedule["neuron_keep_solved"]
    assert shallow == deep
    for block_plan in plan.blocks:  # every expert narrowed, alike up to the rounding repair (one step of 8)
        assert len(block_plan.neurons) == block_plan.num_experts
        assert max(block_plan.widths) - min(block_plan.widths) <= 8 and max(block_plan.widths) < 64


def test_trapezoid_keeps_more_in_deeper_layers():
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
    plan = hf_moe_prune.prune(model, _fixture_config(allocation="trapezoid"), progress=False)
    layers = plan.neuron_schedule["layers"]
    whole = [layer["whole"] for layer in layers]
    kept_neurons = [sum(b.widths) for b in plan.blocks]
    assert whole == sorted(whole) and whole[0] < whole[-1]
    assert kept_neurons == sorted(kept_neurons) and kept_neurons[0] < kept_neurons[-1]
    shallow, deep = plan.neuron_schedule["neuron_keep_solved"]
    assert deep - shallow == pytest.approx(0.2)  # the default line's slope, shifted to meet the budget
    for block_plan in plan.blocks:  # the experts kept whole are the highest-scored ones
        scores = torch.tensor(block_plan.scores)
        full = [e for e in block_plan.kept if e not in block_plan.neurons]
        narrowed = list(block_plan.neurons)
        assert scores[full].min() >= scores[narrowed].max()


def test_uniform_neuron_unit_with_another_method_and_expert_drops():
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen2_moe"))
    config = _fixture_config(
        "reap", 0.5, unit="neuron", allocation="uniform", method_kwargs={"drop_experts": 0.25, "reduce": "mean"}
    )
    plan = hf_moe_prune.prune(model, config, progress=False)
    assert [b.num_kept for b in plan.blocks] == [12] * 4  # a quarter of the experts dropped whole
    widths = {w for b in plan.blocks for w in b.widths}
    assert len(widths) <= 3 and max(widths) < 64  # the rest narrowed alike, none kept whole ("uniform" default)
    removed = sum(b.num_experts * 64 - sum(b.widths) for b in plan.blocks)
    assert removed == 8 * math.floor(0.5 * 4 * 16 * 64 / 8)
    assert plan.is_uniform is False


def test_neuron_pruned_fixture_reloads_through_from_pretrained(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=_fixture_config())
    plan = model.moe_pruning_plan
    model.save_pretrained(tmp_path / "tenp")
    saved_plan = json.loads((tmp_path / "tenp" / "moe_pruning_plan.json").read_text())
    assert saved_plan["unit"] == "neuron" and saved_plan["blocks"][0]["neurons"]
    card = (tmp_path / "tenp" / "README.md").read_text()
    assert "Expert neurons kept per MoE layer" in card and "every kept expert stays reachable" in card
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tenp")
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=1e-5, atol=1e-6)
    assert reloaded.moe_pruning_plan.expert_widths == plan.expert_widths
    size = sum(p.numel() for p in reloaded.parameters())
    assert size == plan.parameters["after"] < plan.parameters["before"]
    out = reloaded.generate(IDS[:1, :4], max_new_tokens=4, do_sample=False)
    assert out.shape[1] == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compensation": "fisher"}, "compensation='none'"),
        ({"allocation": "global"}, "decides whole-expert counts"),
        ({"ratio": None, "num_experts_to_keep": 4}, "give `ratio`"),
        ({"method_kwargs": {"keep_whole": 1.5}}, "keep_whole must be a fraction"),
        ({"method_kwargs": {"neuron_score": "weird"}}, "neuron_score must be one of"),
        ({"unit": "layer"}, "unit must be 'expert'"),
    ],
)
def test_bad_neuron_configs_are_refused(kwargs, message):
    options = {"method": "tenp", "ratio": 0.4, **kwargs}
    with pytest.raises(ValueError, match=message):
        MoEPruneConfig(**options)


def test_trapezoid_needs_the_neuron_unit():
    with pytest.raises(ValueError, match="unit='neuron'"):
        MoEPruneConfig("reap", 0.4, allocation="trapezoid")


@pytest.mark.parametrize(
    ("family", "ratio", "kwargs", "message"),
    [
        ("qwen3_moe", 0.95, {"keep_whole": 0.5}, "cannot be met"),
        ("qwen3_moe", 0.1, {"drop_experts": 0.5}, "alone removes more"),
        ("qwen3_moe", 0.4, {"multiple_of": 3}, "not a multiple"),
        ("dbrx", 0.4, {}, "cannot be pruned"),
        ("llama4_text", 0.4, {}, "cannot be pruned"),
    ],
)
def test_infeasible_neuron_plans_fail_before_calibration(family, ratio, kwargs, message):
    model = tiny_model(family)
    config = MoEPruneConfig("tenp", ratio, calibration=ROWS, method_kwargs=kwargs)
    with pytest.raises(ValueError, match=message):
        hf_moe_prune.prune(model, config, progress=False)


def test_a_neuron_pruned_model_is_not_pruned_again():
    model = tiny_model("qwen3_moe")
    hf_moe_prune.prune(model, MoEPruneConfig("tenp", 0.4, calibration=ROWS), progress=False)
    with pytest.raises(ValueError, match="already neuron-pruned"):
        hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.25, calibration=ROWS), progress=False)


def test_remote_code_publishing_refuses_experts_of_different_widths():
    from hf_moe_prune.export.hub import push_to_hub

    model = tiny_model("qwen3_moe")
    hf_moe_prune.prune(model, MoEPruneConfig("tenp", 0.4, calibration=ROWS), progress=False)
    with pytest.raises(ValueError, match="cannot publish experts of different widths"):
        push_to_hub(model, "tester/tenp", remote_code=True)  # refused before anything is uploaded
