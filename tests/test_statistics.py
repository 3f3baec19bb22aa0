"""Calibrate once, decide many times: saved statistics decide exactly as calibrating in place, are refused for another
model, and combine like concatenated calibration data."""

import copy
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.cli import main
from hf_moe_prune.registries import ALLOCATIONS, METHODS
from hf_moe_prune.streaming import stream_prune
from hf_moe_prune.testing import fixture_path, mixed_texts, tiny_model

SMALL = {"num_samples": 12, "seq_len": 64, "batch_size": 4, "eval_fraction": 0.25}
IDS = torch.randint(5, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
FORWARD_METHODS = sorted(m.name for m in METHODS.values() if m.fit is None and not m.searches)
FORWARD_ALLOCATIONS = sorted(
    a.name for a in ALLOCATIONS.values() if a.streams and "expert" in a.units and a.allocate is not None
)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _kept(plan):
    return [(b.kept, b.neurons) for b in plan.blocks]


@pytest.fixture(scope="module")
def fixture_model():
    return AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))


@pytest.fixture(scope="module")
def saved(fixture_model, tmp_path_factory):
    """Statistics of the qwen3_moe fixture on its mixed texts, saved and read back."""
    stats = hf_moe_prune.calibrate(fixture_model, {**SMALL, "calibration": mixed_texts()}, progress=False)
    folder = tmp_path_factory.mktemp("stats") / "qwen3"
    stats.save(folder)
    return stats, folder


def _pair(model, stats_or_folder, **kwargs):
    """(plan, logits) calibrating in place and (plan, logits) deciding from the statistics, for one request."""
    direct = copy.deepcopy(model)
    plan = hf_moe_prune.prune(direct, MoEPruneConfig(calibration=mixed_texts(), **SMALL, **kwargs), progress=False)
    decided = copy.deepcopy(model)
    saved_plan = hf_moe_prune.prune(
        decided, MoEPruneConfig(statistics=stats_or_folder, **SMALL, **kwargs), progress=False
    )
    return (plan, _logits(direct)), (saved_plan, _logits(decided))


@pytest.mark.parametrize("method", FORWARD_METHODS)
def test_saved_statistics_decide_like_calibrating_in_place(fixture_model, saved, method):
    stats, folder = saved
    configs = [{"allocation": a, "compensation": "none"} for a in FORWARD_ALLOCATIONS]
    if METHODS.get(method).unit == "neuron":
        configs = [{"allocation": "trapezoid"}, {"allocation": "uniform"}]
    for extra in configs:
        ratio = 0.4 if METHODS.get(method).unit == "neuron" else 0.5
        (plan, logits), (saved_plan, saved_logits) = _pair(fixture_model, folder, method=method, ratio=ratio, **extra)
        assert _kept(saved_plan) == _kept(plan), (method, extra)
        torch.testing.assert_close(saved_logits, logits, rtol=1e-6, atol=1e-6)
        # no calibration data was read: the plan names the statistics, and measures itself on their held-out rows
        assert saved_plan.calibration["statistics"]["data_hash"] == stats.fingerprint["data_hash"]
        assert saved_plan.quality["kl"] == pytest.approx(plan.quality["kl"], rel=1e-5)


@pytest.mark.parametrize("method", ["reap", "frequency", "ean", "tenp"])
def test_streaming_decides_from_statistics_like_calibrating(saved, method):
    stats, folder = saved
    ratio = 0.4 if method == "tenp" else 0.5
    streamed = stream_prune(
        fixture_path("qwen3_moe"), MoEPruneConfig(method, ratio, calibration=mixed_texts(), **SMALL), progress=False
    )
    decided = stream_prune(
        fixture_path("qwen3_moe"), MoEPruneConfig(method, ratio, statistics=folder, **SMALL), progress=False
    )
    assert _kept(decided.moe_pruning_plan) == _kept(streamed.moe_pruning_plan)
    torch.testing.assert_close(_logits(decided), _logits(streamed), rtol=1e-5, atol=1e-5)
    # and through from_pretrained, which streams by default
    loaded = AutoModelForCausalLM.from_pretrained(
        fixture_path("qwen3_moe"), pruning_config=MoEPruneConfig(method, ratio, statistics=stats, **SMALL)
    )
    assert _kept(loaded.moe_pruning_plan) == _kept(streamed.moe_pruning_plan)


def test_streaming_calibration_gathers_the_same_statistics(saved):
    stats, _ = saved
    streamed = hf_moe_prune.calibrate(
        fixture_path("qwen3_moe"), {**SMALL, "calibration": mixed_texts()}, progress=False
    )
    assert streamed.names == stats.names
    assert streamed.fingerprint["data_hash"] == stats.fingerprint["data_hash"]
    assert torch.equal(streamed.held_out, stats.held_out)
    for name, block in stats.blocks.items():
        assert streamed.blocks[name].tokens == block.tokens
        for stat, tensor in block.tensors.items():
            torch.testing.assert_close(streamed.blocks[name][stat], tensor, rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip(saved):
    stats, folder = saved
    loaded = hf_moe_prune.load_statistics(folder)
    assert loaded.fingerprint == stats.fingerprint and loaded.routing == stats.routing
    assert torch.equal(loaded.held_out, stats.held_out)
    for name, block in stats.blocks.items():
        assert loaded.blocks[name].tokens == block.tokens
        assert all(torch.equal(loaded.blocks[name][s], t) for s, t in block.tensors.items())
    with pytest.raises(FileNotFoundError, match="No calibration statistics"):
        hf_moe_prune.load_statistics(folder.parent / "missing")


def test_save_never_replaces_a_folder_that_is_not_statistics_or_a_model(saved, tmp_path):
    stats, _ = saved
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        stats.save(tmp_path)
    with pytest.raises(FileExistsError, match="notes.txt"):
        stats.save(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    stats.save(tmp_path / "again")
    stats.save(tmp_path / "again", overwrite=True)  # earlier statistics may be replaced


def test_statistics_of_another_model_are_refused(saved, fixture_model):
    stats, folder = saved
    other_family = tiny_model("mixtral")
    with pytest.raises(ValueError, match="gathered on a qwen3_moe model"):
        hf_moe_prune.prune(other_family, MoEPruneConfig(ratio=0.5, statistics=folder), progress=False)
    fewer = tiny_model("qwen3_moe", num_experts=8, num_hidden_layers=4)
    names = [n for n in stats.routing]
    assert all(n in dict(fewer.named_modules()) for n in names)
    with pytest.raises(ValueError, match="statistics count 16 experts, the model has 8"):
        hf_moe_prune.prune(fewer, MoEPruneConfig(ratio=0.5, statistics=folder), progress=False)
    shallower = tiny_model("qwen3_moe", num_experts=16, num_hidden_layers=2)
    with pytest.raises(ValueError, match="other MoE layers"):
        hf_moe_prune.prune(shallower, MoEPruneConfig(ratio=0.5, statistics=folder), progress=False)
    retrained = copy.deepcopy(fixture_model)
    with torch.no_grad():
        for module in retrained.modules():
            if type(module).__name__.endswith("TopKRouter"):
                module.weight.mul_(-1.5)
    with pytest.raises(ValueError, match="router weights differ"):
        hf_moe_prune.prune(retrained, MoEPruneConfig(ratio=0.5, statistics=folder), progress=False)


def test_combined_statistics_equal_calibrating_on_the_concatenated_data(fixture_model):
    rows = hf_moe_prune.pipeline.calibration_job(
        fixture_model,
        MoEPruneConfig(ratio=0.5, calibration=mixed_texts(), num_samples=20, seq_len=64, eval_fraction=0),
    ).rows
    first, second = rows[:12], rows[12:]
    base = {"seq_len": 64, "batch_size": 4, "eval_fraction": 0}
    parts = {
        "a": hf_moe_prune.calibrate(fixture_model, {**base, "num_samples": 12, "calibration": first}, progress=False),
        "b": hf_moe_prune.calibrate(fixture_model, {**base, "num_samples": 8, "calibration": second}, progress=False),
    }
    whole = hf_moe_prune.calibrate(fixture_model, {**base, "num_samples": 20, "calibration": rows}, progress=False)
    combined = hf_moe_prune.combine_statistics(parts, {"a": 12 / 20, "b": 8 / 20})
    for name, block in whole.blocks.items():
        assert combined.blocks[name].tokens == block.tokens
        for stat, tensor in block.tensors.items():
            torch.testing.assert_close(combined.blocks[name][stat], tensor, rtol=1e-9, atol=1e-9)
    # the same through the config, and equal weights are a different (domain-balanced) mix
    one = copy.deepcopy(fixture_model)
    weighted = MoEPruneConfig(ratio=0.5, statistics=parts, statistics_weights={"a": 12, "b": 8}, **base)
    two = copy.deepcopy(fixture_model)
    plan = hf_moe_prune.prune(one, weighted, progress=False)
    reference = hf_moe_prune.prune(two, MoEPruneConfig(ratio=0.5, statistics=whole, **base), progress=False)
    assert _kept(plan) == _kept(reference)
    assert set(plan.calibration["statistics"]["parts"]) == {"a", "b"}
    balanced = hf_moe_prune.combine_statistics(parts)
    assert balanced.fingerprint["parts"]["a"]["weight"] == 0.5


def test_requests_that_need_more_than_sums_calibrate_and_say_so(saved, fixture_model, caplog):
    _, folder = saved
    with pytest.raises(ValueError, match="learns from gradients; give `calibration`"):
        hf_moe_prune.prune(copy.deepcopy(fixture_model), MoEPruneConfig("compel", 0.5, statistics=folder))
    caplog.set_level(logging.WARNING, logger="hf_moe_prune.pipeline.statistics")
    model = copy.deepcopy(fixture_model)
    config = MoEPruneConfig("reap", 0.5, compensation="fisher", statistics=folder, calibration=mixed_texts(), **SMALL)
    plan = hf_moe_prune.prune(model, config, progress=False)
    assert "calibrating" in caplog.text and "statistics" not in plan.calibration


def test_bad_statistics_options_fail_at_config_time():
    with pytest.raises(TypeError, match="statistics must be a folder"):
        MoEPruneConfig(ratio=0.5, statistics=3)
    with pytest.raises(ValueError, match="give `statistics` too"):
        MoEPruneConfig(ratio=0.5, statistics_weights={"a": 1})
    with pytest.raises(ValueError, match="a weight to each of"):
        MoEPruneConfig(ratio=0.5, statistics={"a": "x", "b": "y"}, statistics_weights={"a": 1})
    with pytest.raises(ValueError, match=">= 0"):
        MoEPruneConfig(ratio=0.5, statistics={"a": "x"}, statistics_weights={"a": -1})
    assert MoEPruneConfig(ratio=0.5, statistics="stats/").to_dict()["statistics"] == "stats/"


def test_cli_calibrate_then_prune_from_statistics(tmp_path, capsys):
    stats = tmp_path / "stats"
    small = ["--num-samples", "12", "--seq-len", "64", "--quiet"]
    assert main(["calibrate", "--output", str(stats), *small]) == 0
    assert "Decide from them" in capsys.readouterr().out
    out = tmp_path / "pruned"
    assert (
        main(["prune", "--statistics", str(stats), "--ratio", "0.25", "--output", str(out), "--no-eval", *small]) == 0
    )
    plan = hf_moe_prune.PrunePlan.load(out / "moe_pruning_plan.json")
    assert plan.calibration["statistics"]["data_hash"] == hf_moe_prune.load_statistics(stats).fingerprint["data_hash"]
    assert main(["prune", "--statistics", str(tmp_path / "nothing"), "--output", str(tmp_path / "x")]) == 2
    assert "holds no statistics.json" in capsys.readouterr().err
