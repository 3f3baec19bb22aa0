"""DiEP: its relaxed forward reaches the masked routing slicing reproduces, and its discretization (the `learned`
allocation) keeps expected counts instead of ranking interior probabilities across layers."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.allocation import ALLOCATIONS, layer_floor
from hf_moe_prune.reshape.mask import mask_experts, offset_router_logits
from hf_moe_prune.testing import fixture_path, mixed_texts, tiny_model

IDS = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe", "deepseek_v3"])
def test_binary_masks_route_as_the_masked_model(family):
    """The `log m` routing term was never applied (the logit mask was handed over in a form the router patch did not
    read), and a score-correction bias would still have selected masked experts."""
    model = tiny_model(family)
    blocks = find_blocks(model)
    kept = {b.name: list(range(0, b.num_experts, 2)) for b in blocks}
    with torch.no_grad():
        for block in blocks:
            bias = getattr(block.router, "e_score_correction_bias", None)
            if bias is not None:  # make the dropped (odd) experts the ones the bias alone would select
                bias[1::2] = 10.0
        with mask_experts(blocks, kept):
            masked = model(input_ids=IDS).logits
        binary = {b.name: torch.zeros(b.num_experts).index_fill(0, torch.tensor(kept[b.name]), 1.0) for b in blocks}
        with offset_router_logits(blocks, {name: torch.log(m.clamp(min=1e-6)) for name, m in binary.items()}):
            soft = model(input_ids=IDS).logits
        full = model(input_ids=IDS).logits
    torch.testing.assert_close(soft, masked, rtol=1e-4, atol=1e-4)
    assert (full - masked).abs().max() > 1e-2  # the masks change the model
    for block in blocks:  # biases restored
        bias = getattr(block.router, "e_score_correction_bias", None)
        assert bias is None or bool((bias[1::2] == 10.0).all())


def _blocks(n, num=16, top_k=2):
    return [SimpleNamespace(name=f"l{i}", num_experts=num, top_k=top_k, groups=(1, 1)) for i in range(n)]


def test_learned_allocation_keeps_expected_counts():
    blocks = _blocks(2)
    learned = ALLOCATIONS.get("learned")
    # interior probabilities a little apart: ranking them would keep all 16 of l0 and 2 of l1
    interior = {"l0": torch.full((16,), 0.6, dtype=torch.float64), "l1": torch.full((16,), 0.4, dtype=torch.float64)}
    interior["l0"][0] += 1e-3
    assert learned(blocks, interior, 16, {}) == {"l0": 10, "l1": 6}
    # binary probabilities: the same as ranking them
    binary = {"l0": (torch.arange(16) < 12).double(), "l1": (torch.arange(16) < 4).double()}
    assert learned(blocks, binary, 16, {}) == {"l0": 12, "l1": 4}
    # floors and exact budget still hold
    lopsided = {"l0": torch.ones(16, dtype=torch.float64), "l1": torch.full((16,), 1e-4, dtype=torch.float64)}
    assert learned(blocks, lopsided, 16, {}) == {"l0": 14, "l1": 2}


def test_diep_keeps_every_layer_off_its_floor_and_below_whole():
    """With the former cross-layer ranking of σ(α + β), DiEP kept every expert of the first MoE layer and top-k of
    another on the trained fixtures (qwen3_moe at 0.5: [16, 2, 5, 9])."""
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
    config = MoEPruneConfig(
        "diep", 0.5, calibration=mixed_texts(), num_samples=8, seq_len=64, method_kwargs={"steps": 40}
    )
    plan = hf_moe_prune.prune(model, config, progress=False)
    blocks = find_blocks(AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe")))
    counts = [b.num_kept for b in plan.blocks]
    assert sum(counts) == 32
    assert all(layer_floor(block) < count < block.num_experts for block, count in zip(blocks, counts, strict=True))
    for block_plan in plan.blocks:  # within a layer, the highest keep probabilities are kept
        scores = torch.tensor(block_plan.scores)
        dropped = [e for e in range(block_plan.num_experts) if e not in block_plan.kept]
        assert scores[block_plan.kept].min() >= scores[dropped].max()
