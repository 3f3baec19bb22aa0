"""Allocation strategies on hand-made scores: exact global budget and per-layer floors, for every allocator."""

import math
from types import SimpleNamespace

import pytest
import torch

import hf_moe_prune
from hf_moe_prune import find_blocks
from hf_moe_prune.allocation import ALLOCATIONS, fit_budget, layer_floor, total_budget
from hf_moe_prune.config import MoEPruneConfig


def fake_block(name, num=16, top_k=2, groups=(1, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    experts = SimpleNamespace(gate_up_proj=torch.randn(num, 8, 12, generator=g) * (1 + seed))
    return SimpleNamespace(
        name=name,
        num_experts=num,
        top_k=top_k,
        groups=groups,
        experts=experts,
        layer_idx=seed,
        router_weight=torch.zeros(num, 12),  # [E, hidden]: what the outlier metric reads the hidden size from
        expert_weights=lambda: [("gate_up_proj", experts.gate_up_proj, None)],
        adapter=SimpleNamespace(routing="experts_call", flat_expert_tensors=()),
    )


def skewed_scores(blocks):
    # layer 0: one dominant expert; layer 1: flat; others: random
    g = torch.Generator().manual_seed(1)
    out = {}
    for i, b in enumerate(blocks):
        s = torch.rand(b.num_experts, generator=g, dtype=torch.float64)
        if i == 0:
            s[:] = 0.01
            s[0] = 100
        if i == 1:
            s[:] = 1.0
        out[b.name] = s
    return out


@pytest.mark.parametrize("name", ["uniform", "global", "outlier", "learned"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.8])
def test_budget_exact_and_floors(name, ratio):
    blocks = [fake_block(f"l{i}", seed=i) for i in range(4)]
    config = MoEPruneConfig(ratio=ratio)
    budget = total_budget(blocks, config)
    total = sum(b.num_experts for b in blocks)
    assert budget == total - math.floor(ratio * total)
    counts = ALLOCATIONS.get(name)(blocks, skewed_scores(blocks), budget, {})
    assert sum(counts.values()) == budget
    for b in blocks:
        assert b.top_k <= counts[b.name] <= b.num_experts


@pytest.mark.parametrize("name", ["global", "outlier", "learned", "uniform"])
def test_group_rules_and_top_k_floor(name):
    blocks = [fake_block(f"l{i}", num=32, top_k=4, groups=(4, 2), seed=i) for i in range(3)]
    blocks.append(fake_block("dense", num=16, top_k=6, seed=7))
    budget = 40
    counts = ALLOCATIONS.get(name)(blocks, skewed_scores(blocks), budget, {})
    assert sum(counts.values()) == budget
    for b in blocks[:3]:
        assert counts[b.name] % 4 == 0 and counts[b.name] >= layer_floor(b) == 8
    assert counts["dense"] >= 6


def test_global_moves_budget_to_flat_layers():
    blocks = [fake_block(f"l{i}", seed=i) for i in range(2)]
    counts = ALLOCATIONS.get("global")(blocks, skewed_scores(blocks), 16, {})
    # layer 0 has one dominant expert: after per-layer normalization it gives up its weak ones first
    assert counts["l0"] == 2 and counts["l1"] == 14


def test_outlier_follows_outlier_ratio():
    blocks = [fake_block(f"l{i}", seed=0) for i in range(3)]
    blocks[2].experts.gate_up_proj = blocks[2].experts.gate_up_proj.clone()
    blocks[2].experts.gate_up_proj[:, 0, :] *= 50  # heavy outliers
    context = {}
    counts = ALLOCATIONS.get("outlier")(blocks, skewed_scores(blocks), 24, context)
    assert sum(counts.values()) == 24
    assert counts["l2"] > counts["l0"]
    assert context["outlier_ratios"]["l2"] > context["outlier_ratios"]["l0"]


def test_infeasible_budget_raises():
    blocks = [fake_block(f"l{i}") for i in range(2)]
    with pytest.raises(ValueError, match="at least 4"):
        fit_budget(blocks, {"l0": 1, "l1": 1}, 3)


def test_config_accepts_allocation_names_and_method_defaults():
    assert MoEPruneConfig(ratio=0.5, allocation="global").allocation == "global"
    config = MoEPruneConfig(method="compel", ratio=0.5)
    assert (config.allocation, config.compensation) == ("outlier", "fisher")
    assert MoEPruneConfig(method="diep", ratio=0.5).allocation == "learned"
    assert MoEPruneConfig(ratio=0.5).allocation == "uniform"


def test_evolutionary_allocation_keeps_the_budget_and_never_loses_to_its_start():
    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig, find_blocks
    from hf_moe_prune.allocation import fit_budget
    from hf_moe_prune.allocation.evolutionary import _agreement, evolutionary_allocation
    from hf_moe_prune.testing import tiny_model

    rows = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    model = tiny_model("qwen3_moe", num_hidden_layers=4)
    blocks = find_blocks(model)
    scores = {b.name: torch.rand(8, generator=torch.Generator().manual_seed(i)) for i, b in enumerate(blocks)}
    context = {"model": model, "rows": rows, "seed": 0, "evolution": {"generations": 3, "population": 4}}
    counts = evolutionary_allocation(blocks, scores, 16, context)
    assert sum(counts.values()) == 16 and all(c >= 2 for c in counts.values())
    start = fit_budget(blocks, {b.name: 4.0 for b in blocks}, 16)
    batches = [rows[:2], rows[2:4]]
    teacher = [torch.softmax(model(input_ids=b).logits.float(), -1) for b in batches]
    assert context["evolution_fitness"] >= _agreement(model, blocks, scores, start, batches, teacher) - 1e-9
    plan = hf_moe_prune.prune(
        model, MoEPruneConfig("reap", 0.5, allocation="evolutionary", calibration=rows), progress=False
    )
    assert sum(b.num_kept for b in plan.blocks) == 16 and all(b.num_kept >= 2 for b in plan.blocks)


@pytest.mark.parametrize(
    ("family", "rows"),
    [
        ("qwen3_moe", 32),
        ("gpt_oss", 64),
        ("llama4_text", 64),
        ("dbrx", 16),
        ("jetmoe", 32),
        ("switch_transformers", 16),
    ],
)
def test_outlier_allocation_reads_every_expert_layout(family, rows):
    """The Wanda metric needs the experts' input projection as [E, rows, hidden], whatever the family stores: fused
    (transposed or not), DBRX's flattened rows, one module per expert, or split over modules."""
    import copy

    from hf_moe_prune.allocation.outlier import input_weights
    from hf_moe_prune.testing import tiny_model

    model = tiny_model(family, router_scale=4.0)
    block = find_blocks(model)[0]
    assert tuple(input_weights(block).shape) == (8, rows, 32)
    ids = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    config = MoEPruneConfig("reap", 0.5, calibration=ids, allocation="outlier")
    plan = hf_moe_prune.prune(copy.deepcopy(model), config, progress=False)
    assert sum(b.num_kept for b in plan.blocks) == 4 * len(plan.blocks)
