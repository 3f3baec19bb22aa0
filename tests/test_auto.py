"""`method="auto"` / `allocation="auto"`: the winner is the candidate with the lowest held-out KL, checked against an
explicit loop that prunes a copy of the model with each candidate's own config."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, PrunePlan
from hf_moe_prune.methods import METHODS
from hf_moe_prune.pipeline import prepare
from hf_moe_prune.pipeline.auto import candidates, compensations
from hf_moe_prune.registries import ALLOCATIONS
from hf_moe_prune.testing import fixture_path

from .conftest import HELD_OUT, pruned_copy


def test_auto_picks_the_candidate_with_the_lowest_held_out_kl(held_out_fixture):
    model, rows = held_out_fixture
    _, plan = pruned_copy(model, method="auto", ratio=0.5, calibration=rows, time_budget=600)
    table = plan.search["candidates"]
    assert len(table) >= 10 and all("kl" in row for row in table)  # every candidate judged
    # the explicit loop: each candidate pruned for real, with its own config, measured on the same held-out rows
    explicit = []
    for row in table:
        _, own = pruned_copy(
            model,
            method=row["method"],
            allocation=row["allocation"],
            method_kwargs=row["method_kwargs"],
            compensation=row["compensation"],
            ratio=0.5,
            calibration=rows,
        )
        explicit.append(own.quality["kl"])
        assert row["kl"] == pytest.approx(own.quality["kl"], rel=1e-4, abs=1e-6)  # masking = slicing
    best = min(range(len(explicit)), key=lambda i: (explicit[i], i))
    assert plan.search["chosen"] == best
    chosen = table[best]
    assert plan.method == chosen["method"] and plan.config["allocation"] == chosen["allocation"]
    assert plan.config["compensation"] == chosen["compensation"]
    assert plan.quality["kl"] == pytest.approx(min(explicit), rel=1e-4, abs=1e-6)  # the applied plan is the winner
    assert plan.search["requested"] == {"method": "auto", "allocation": "auto", "compensation": "auto"}
    compensated = [row for row in table if row["compensation"] != "none"]
    assert {row["compensation"] for row in compensated} == {"fisher"} and len(compensated) == 2  # the 2 best plans


def test_candidates_come_from_the_registries(held_out_fixture):
    model, rows = held_out_fixture
    job = prepare(model, MoEPruneConfig(method="auto", ratio=0.5, calibration=rows, **HELD_OUT))
    names = {m for m, _, _ in candidates(job)}
    expected = {
        m.name
        for m in METHODS.values()
        if not m.searches
        and m.fit is None
        and m.unit == "expert"
        and m.requires
        and "neuron_magnitude" not in m.requires
    }
    assert names == expected and {"reap", "ean", "output_error"} <= names
    expected = {a.name for a in ALLOCATIONS.values() if a.allocate is not None and a.streams and "expert" in a.units}
    assert {a for _, a, _ in candidates(job)} == expected >= {"uniform", "global"}  # auto's default: every allocation
    assert ("reap", "uniform", {"reduce": "sum"}) in candidates(job)  # sum and mean forms both compete
    job = prepare(model, MoEPruneConfig(method="reap", allocation="auto", ratio=0.5, calibration=rows, **HELD_OUT))
    assert {m for m, _, _ in candidates(job)} == {"reap"}
    allocations = [a for _, a, _ in candidates(job)]
    assert allocations[0] == "uniform" and "global" in allocations and "evolutionary" not in allocations


def test_time_budget_bounds_the_search(held_out_fixture):
    model, rows = held_out_fixture
    _, plan = pruned_copy(model, method="auto", ratio=0.5, calibration=rows, time_budget=0.0)
    table = plan.search["candidates"]
    judged = [i for i, row in enumerate(table) if "kl" in row]
    # the first candidate is always judged, and the first compensated one (the best masked plan, compensated)
    assert table[judged[0]]["compensation"] == "none" and judged[0] == 0
    assert len(judged) == 2 and table[judged[1]]["compensation"] == "fisher"
    assert {k: table[judged[1]][k] for k in ("method", "allocation")} == {
        k: table[0][k] for k in ("method", "allocation")
    }
    assert all(row.get("skipped") == "time budget spent" for i, row in enumerate(table) if i not in judged)
    assert plan.search["chosen"] in judged


def test_auto_needs_held_out_rows_and_says_so_before_calibration(held_out_fixture):
    model, rows = held_out_fixture
    with pytest.raises(ValueError, match="eval_fraction"):
        MoEPruneConfig(method="auto", ratio=0.5, calibration=rows, eval_fraction=0.0)
    with pytest.raises(ValueError, match="time_budget"):
        MoEPruneConfig(method="auto", ratio=0.5, calibration=rows, time_budget=-1)


def test_the_search_table_is_saved_and_reloads(held_out_fixture, tmp_path):
    model, rows = held_out_fixture
    pruned, plan = pruned_copy(model, method="auto", ratio=0.25, calibration=rows)
    pruned.save_pretrained(tmp_path / "out")
    saved = PrunePlan.load(tmp_path / "out" / "moe_pruning_plan.json")
    assert saved.search == plan.search and saved.quality == plan.quality
    card = (tmp_path / "out" / "README.md").read_text()
    assert "auto" in card and plan.method in card
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(rows[:2]).logits, pruned(rows[:2]).logits)


def test_streaming_refuses_auto_and_from_pretrained_falls_back(held_out_fixture):
    _, rows = held_out_fixture
    config = MoEPruneConfig(method="auto", ratio=0.25, calibration=rows, **HELD_OUT)
    with pytest.raises(hf_moe_prune.streaming.StreamingRefused, match="auto"):
        hf_moe_prune.stream_prune(fixture_path("qwen3_moe"), config)
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=config)
    assert model.moe_pruning_plan.search is not None


def test_compensation_auto_judges_fisher_and_puts_the_weights_back(held_out_fixture):
    """The judged compensation runs on the unsliced model; its rows must be restored, or `apply` would compensate
    twice (and a `none` winner would keep the compensated weights)."""
    model, rows = held_out_fixture
    job = prepare(model, MoEPruneConfig(method="reap", compensation="auto", ratio=0.5, calibration=rows, **HELD_OUT))
    assert compensations(job) == ["fisher"]  # merge cannot be undone, none is the masked plan itself
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, plan = pruned_copy(model, method="reap", compensation="auto", ratio=0.5, calibration=rows)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the source copy is untouched
    table = plan.search["candidates"]
    assert [row["compensation"] for row in table] == ["none", "fisher"]
    assert plan.search["requested"] == {"method": "reap", "allocation": "uniform", "compensation": "auto"}
    chosen = table[plan.search["chosen"]]["compensation"]
    assert plan.config["compensation"] == chosen
    explicit, own = pruned_copy(model, method="reap", compensation=chosen, ratio=0.5, calibration=rows)
    assert plan.quality["kl"] == pytest.approx(own.quality["kl"], rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(pruned(rows[:2]).logits, explicit(rows[:2]).logits)
    fisher = next(row for row in table if row["compensation"] == "fisher")
    _, with_fisher = pruned_copy(model, method="reap", compensation="fisher", ratio=0.5, calibration=rows)
    assert fisher["kl"] == pytest.approx(with_fisher.quality["kl"], rel=1e-4, abs=1e-6)


def test_compensation_auto_is_checked_before_calibration(held_out_fixture):
    _, rows = held_out_fixture
    with pytest.raises(ValueError, match="eval_fraction"):
        MoEPruneConfig(method="reap", compensation="auto", ratio=0.5, calibration=rows, eval_fraction=0.0)
    with pytest.raises(ValueError, match="compensation"):
        MoEPruneConfig(method="tenp", compensation="auto", ratio=0.4, calibration=rows)
    assert MoEPruneConfig(method="auto", ratio=0.5).compensation == "auto"
    assert MoEPruneConfig(method="auto", ratio=0.5, compensation="none").compensation == "none"
    config = MoEPruneConfig(method="reap", compensation="auto", ratio=0.25, calibration=rows, **HELD_OUT)
    with pytest.raises(hf_moe_prune.streaming.StreamingRefused, match="compensation 'auto'"):
        hf_moe_prune.stream_prune(fixture_path("qwen3_moe"), config)
