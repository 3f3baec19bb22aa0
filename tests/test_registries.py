"""Registry-driven contracts: every registered allocation and compensation, filtered by what its record declares,
and the walk-throughs of docs/adding_a_method.md and docs/adding_an_allocation.md with toy entries."""

import contextlib

import pytest
import torch

import hf_moe_prune
from hf_moe_prune import ALLOCATIONS, COMPENSATIONS, METHODS, MoEPruneConfig
from hf_moe_prune.adapters import find_blocks
from hf_moe_prune.allocation import fit_budget, layer_floor
from hf_moe_prune.compensation import CompensationContext
from hf_moe_prune.registries import Allocator, Compensator, names_for
from hf_moe_prune.streaming import streaming_refusal
from hf_moe_prune.testing import tiny_model, tiny_tokenizer

from .conftest import CALIBRATION

EXPERT_ALLOCATIONS = [n for n in names_for(ALLOCATIONS, "expert") if ALLOCATIONS.get(n).allocate is not None]


@contextlib.contextmanager
def registered(registry, name):
    """Remove a toy entry again, so that other tests see the registries as shipped."""
    try:
        yield
    finally:
        registry._items.pop(name, None)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])  # plain and group-limited routing
@pytest.mark.parametrize("name", EXPERT_ALLOCATIONS)
def test_every_allocation_meets_floors_and_the_exact_budget(name, family):
    blocks = find_blocks(tiny_model(family))
    generator = torch.Generator().manual_seed(0)
    scores = {b.name: torch.rand(b.num_experts, generator=generator, dtype=torch.float64) for b in blocks}
    floors, total = sum(layer_floor(b) for b in blocks), sum(b.num_experts for b in blocks)
    for budget in sorted({floors, (floors + total) // 2, total}):
        try:
            counts = ALLOCATIONS.get(name)(blocks, scores, budget, {})
        except ValueError as error:  # only group steps may make a budget unreachable, and then it says so
            assert "group" in str(error)
            continue
        assert sum(counts.values()) == budget, (name, budget, counts)
        for b in blocks:
            assert layer_floor(b) <= counts[b.name] <= b.num_experts


@pytest.mark.parametrize("name", ALLOCATIONS.names())
def test_allocation_records_are_consistent(name):
    allocator = ALLOCATIONS.get(name)
    assert isinstance(allocator, Allocator) and allocator.name == name and allocator.units
    assert allocator.streams == (not allocator.reads_model and not allocator.needs_inputs and not allocator.searches)
    blocks = find_blocks(tiny_model("qwen3_moe"))
    unit = allocator.units[0]
    config = MoEPruneConfig(method="reap", ratio=0.5, unit=unit, allocation=name, calibration=CALIBRATION)
    refusal = streaming_refusal(config, METHODS.get("reap"), blocks)
    assert (refusal is None) == allocator.streams, refusal


@pytest.mark.parametrize("name", COMPENSATIONS.names())
def test_every_compensation_keeps_all_as_identity_and_changes_weights_as_declared(name):
    compensator = COMPENSATIONS.get(name)
    assert isinstance(compensator, Compensator) and compensator.name == name
    model = tiny_model("qwen3_moe")
    block = find_blocks(model)[0]
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model.model.embed_tokens(rows).reshape(-1, block.router_weight.shape[1])
    stats = hf_moe_prune.calibration.LayerStats(block.num_experts, ("count", "gate_sum"))
    stats.tensors["count"] += 1
    context = CompensationContext(stats=stats, inputs=hidden if compensator.needs_inputs else None)
    config = MoEPruneConfig(method="reap", ratio=0.5, compensation=name, calibration=CALIBRATION)
    if compensator.searches:  # `auto`: resolved by the pipeline, never applied itself
        assert compensator.compensate is None and not compensator.streams
        with pytest.raises(ValueError, match="search"):
            compensator(block, [0, 2, 4, 6], context)
        assert streaming_refusal(config, METHODS.get("reap"), find_blocks(model)) is not None
        return
    before = {k: v.clone() for k, v in block.module.state_dict().items()}
    compensator(block, list(range(block.num_experts)), context)  # keep all: nothing to compensate
    assert all(torch.equal(before[k], v) for k, v in block.module.state_dict().items())
    compensator(block, [0, 2, 4, 6], context)
    changed = {k for k, v in block.module.state_dict().items() if not torch.equal(before[k], v)}
    assert bool(changed) == compensator.changes_weights, name
    if compensator.touches:  # what `auto` saves and puts back: the kept rows of these tensors, nothing else
        assert changed <= {f"experts.{t}" for t in compensator.touches}, changed
        dropped = [1, 3, 5, 7, *range(8, block.num_experts)]
        assert all(torch.equal(before[k][dropped], block.module.state_dict()[k][dropped]) for k in changed)
    refusal = streaming_refusal(config, METHODS.get("reap"), find_blocks(model))
    assert (refusal is None) == compensator.streams, refusal


def test_adding_an_allocation_walkthrough():
    """docs/adding_an_allocation.md, as written there."""

    @hf_moe_prune.register_allocation("front_loaded", description="early layers keep more experts, linearly")
    def front_loaded(blocks, scores, budget, context=None):
        """Keep counts that fall linearly from the first MoE layer to the last, summing to `budget` exactly."""
        weights = [2.0 - i / max(1, len(blocks) - 1) for i in range(len(blocks))]
        total = sum(w * b.num_experts for w, b in zip(weights, blocks))
        desired = {b.name: budget * w * b.num_experts / total for w, b in zip(weights, blocks)}
        return fit_budget(blocks, desired, budget)

    with registered(ALLOCATIONS, "front_loaded"):
        assert ALLOCATIONS.get("front_loaded").streams  # declared nothing that needs the whole model
        config = MoEPruneConfig(method="reap", ratio=0.5, allocation="front_loaded", calibration=CALIBRATION)
        plan = hf_moe_prune.prune(tiny_model("qwen3_moe"), config, tokenizer=tiny_tokenizer(), progress=False)
        counts = [b.num_kept for b in plan.blocks]
        assert sum(counts) == 8 and counts[0] > counts[1]
    with pytest.raises(ValueError, match="allocation='front_loaded' is not supported"):
        MoEPruneConfig(method="reap", ratio=0.5, allocation="front_loaded")


def test_adding_a_method_walkthrough():
    """docs/adding_a_method.md, as written there."""
    from hf_moe_prune.methods.base import per_routed_token

    @hf_moe_prune.register_method("gate_mass", requires=("count", "gate_sum"), reference="example")
    def gate_mass(stats, generator=None, floor: float = 0.0):
        if floor < 0:
            raise ValueError(f"gate_mass: floor must be >= 0, got {floor!r}")
        return per_routed_token(stats["gate_sum"], stats["count"]).clamp(min=floor)

    with registered(METHODS, "gate_mass"):
        with pytest.raises(ValueError, match="floor must be >= 0"):  # before any calibration
            MoEPruneConfig(method="gate_mass", ratio=0.5, method_kwargs={"floor": -1})
        with pytest.raises(ValueError, match="Did you mean 'floor'"):
            MoEPruneConfig(method="gate_mass", ratio=0.5, method_kwargs={"flor": 0.1})
        config = MoEPruneConfig(method="gate_mass", ratio=0.5, method_kwargs={"floor": 0.01}, calibration=CALIBRATION)
        plan = hf_moe_prune.prune(tiny_model("qwen3_moe"), config, tokenizer=tiny_tokenizer(), progress=False)
        assert plan.method == "gate_mass" and [b.num_kept for b in plan.blocks] == [4, 4]


def test_cli_help_lists_the_registries():
    from hf_moe_prune import cli

    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["prune"].format_help().split())
    for name in [*METHODS.names(), *ALLOCATIONS.names(), *COMPENSATIONS.names()]:
        assert name in text, name
