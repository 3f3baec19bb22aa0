"""Compensation as a reusable step, and the layer-adaptive methods end to end, on the trained fixture."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.compensation import COMPENSATIONS, CompensationContext, reconstruction_error
from hf_moe_prune.testing import fixture_path, mixed_texts


@pytest.fixture(scope="module")
def fixture():
    path = fixture_path("qwen3_moe")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _inputs(model, tokenizer, tokens=1024):
    ids = tokenizer(" ".join(mixed_texts())[:20000], return_tensors="pt").input_ids[:, :tokens]
    block = find_blocks(model)[1]
    captured = {}

    def hook(module, args):
        captured.setdefault("x", args[0].reshape(-1, args[0].shape[-1]))

    handle = block.module.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return block, captured["x"]


@pytest.mark.parametrize("name", ["none", "merge", "fisher"])
def test_nothing_pruned_is_identity(fixture, name):
    model = copy.deepcopy(fixture[0])
    block, x = _inputs(model, fixture[1])
    before = {k: v.clone() for k, v in block.experts.state_dict().items()}
    COMPENSATIONS.get(name)(block, list(range(block.num_experts)), CompensationContext(inputs=x))
    for k, v in block.experts.state_dict().items():
        assert torch.equal(v, before[k])


def test_fisher_reduces_reconstruction_error(fixture):
    model = copy.deepcopy(fixture[0])
    block, x = _inputs(model, fixture[1])
    kept = list(range(0, block.num_experts, 2))
    held_out, fit = x[::2], x[1::2]
    before = reconstruction_error(block, kept, held_out)
    before_fit = reconstruction_error(block, kept, fit)
    COMPENSATIONS.get("fisher")(block, kept, CompensationContext(inputs=fit))
    assert reconstruction_error(block, kept, fit) < 0.8 * before_fit
    assert reconstruction_error(block, kept, held_out) < before  # generalises to other tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "compel"},
        {"method": "diep", "method_kwargs": {"steps": 4}},
        {"method": "reap", "allocation": "global", "compensation": "merge"},
    ],
)
def test_adaptive_methods_prune_to_exact_budget(fixture, kwargs):
    model = copy.deepcopy(fixture[0])
    config = MoEPruneConfig(ratio=0.5, calibration=mixed_texts(), num_samples=8, seq_len=64, **kwargs)
    plan = hf_moe_prune.prune(model, config, tokenizer=fixture[1], progress=False)
    assert sum(b.num_kept for b in plan.blocks) == sum(b.num_experts for b in plan.blocks) // 2
    assert all(b.num_kept >= 2 for b in plan.blocks)
    ids = torch.randint(0, 100, (1, 16))
    assert torch.isfinite(model(input_ids=ids).logits).all()
