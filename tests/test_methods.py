"""Every registered method on every supported family: the shared contract a new method gets tested by for free."""

import pytest
import torch

import hf_moe_prune
from hf_moe_prune import METHODS, MoEPruneConfig, find_blocks
from hf_moe_prune.calibration import LayerStats, collect_stats
from hf_moe_prune.methods import STATISTICS, register_method
from hf_moe_prune.testing import tiny_model

from .conftest import FAMILIES

ROWS = torch.randint(1, 300, (6, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("family", FAMILIES)
def test_method_contract(method, family):
    plans = []
    for _ in range(2):
        model = tiny_model(family)
        config = MoEPruneConfig(
            method=method, ratio=0.25, allocation="uniform", calibration=ROWS, batch_size=4, seed=3, unit="expert"
        )
        plans.append(hf_moe_prune.prune(model, config, progress=False))
    first, second = plans
    assert [b.kept for b in first.blocks] == [b.kept for b in second.blocks]  # deterministic
    for block in first.blocks:
        assert len(block.kept) == 6 and block.kept == sorted(block.kept)
        assert len(block.scores) == 8 and all(torch.isfinite(torch.tensor(block.scores)))
    spec = METHODS.get(method)
    assert spec.requires <= set(STATISTICS)
    assert (first.calibration.get("tokens") is not None) == spec.needs_calibration


def test_methods_compute_their_formulas():
    stats = LayerStats(4, STATISTICS)
    stats.tensors = {
        "count": torch.tensor([4.0, 0.0, 2.0, 1.0], dtype=torch.float64),
        "gate_sum": torch.tensor([2.0, 0.0, 1.5, 0.9], dtype=torch.float64),
        "norm_sum": torch.tensor([8.0, 0.0, 10.0, 3.0], dtype=torch.float64),
        "gate_norm_sum": torch.tensor([4.0, 0.0, 6.0, 2.7], dtype=torch.float64),
        "direction_sum": torch.tensor([0.4, 0.0, 0.3, 0.5], dtype=torch.float64),
    }
    score = {name: METHODS.get(name).score for name in METHODS.names()}
    assert score["frequency"](stats).tolist() == [4, 0, 2, 1]
    assert score["soft_count"](stats).tolist() == [2.0, 0.0, 1.5, 0.9]
    assert score["ean"](stats).tolist() == [8.0, 0.0, 10.0, 3.0]  # EAN is the sum over routed tokens
    assert score["ean"](stats, reduce="mean").tolist() == [2.0, 0.0, 5.0, 3.0]
    assert score["man"](stats).tolist() == [2.0, 0.0, 5.0, 3.0]  # MAN: the per-routed-token mean
    torch.testing.assert_close(score["reap"](stats), torch.tensor([1.0, 0.0, 3.0, 2.7], dtype=torch.float64))
    assert score["reap"](stats, reduce="sum").tolist() == [4.0, 0.0, 6.0, 2.7]
    torch.testing.assert_close(score["tenp"](stats), torch.tensor([0.1, 0.0, 0.15, 0.5], dtype=torch.float64))
    torch.testing.assert_close(score["tenp"](stats, importance="magnitude"), score["reap"](stats))
    generator = torch.Generator().manual_seed(0)
    assert score["random"](stats, generator).shape == (4,)


def test_only_the_needed_observers_run(monkeypatch):
    model = tiny_model("qwen3_moe")
    stats = collect_stats(model, find_blocks(model), frozenset({"count"}), ROWS, 6, progress=False)
    assert set(next(iter(stats.values())).tensors) == {"count"}


def test_a_new_method_plugs_in_by_registering():
    @register_method("_test_last_experts", requires=("count",))
    def last(stats, generator=None):
        return torch.arange(stats.num_experts, dtype=torch.float64)

    try:
        plan = hf_moe_prune.prune(
            tiny_model("olmoe"), MoEPruneConfig("_test_last_experts", 0.5, calibration=ROWS), progress=False
        )
        assert [b.kept for b in plan.blocks] == [[4, 5, 6, 7]] * 2
    finally:
        METHODS._items.pop("_test_last_experts")
