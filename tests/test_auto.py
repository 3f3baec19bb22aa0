"""`method="auto"` / `allocation="auto"`: the winner is the candidate with the lowest held-out KL, checked against an
explicit loop that prunes a copy of the model with each candidate's own config."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, PrunePlan
from hf_moe_prune.methods import METHODS
from hf_moe_prune.pipeline import prepare
from hf_moe_prune.pipeline.auto import candidates
from hf_moe_prune.registries import ALLOCATIONS
from hf_moe_prune.testing import fixture_path, mixed_texts

SETTINGS = {"num_samples": 12, "seq_len": 64, "batch_size": 4, "eval_fraction": 0.25}


@pytest.fixture(scope="module")
def fixture():
    path = fixture_path("qwen3_moe")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = tokenizer("\n\n".join(mixed_texts()[:40]), return_tensors="pt").input_ids[0]
    rows = rows[: SETTINGS["num_samples"] * SETTINGS["seq_len"]].view(SETTINGS["num_samples"], -1)
    return model, rows


def _pruned(model, **kwargs):
    pruned = copy.deepcopy(model)
    plan = hf_moe_prune.prune(pruned, MoEPruneConfig(**{**SETTINGS, **kwargs}), progress=False)
    return pruned, plan


def test_auto_picks_the_candidate_with_the_lowest_held_out_kl(fixture):
    model, rows = fixture
    _, plan = _pruned(model, method="auto", ratio=0.5, calibration=rows, time_budget=600)
    table = plan.search["candidates"]
    assert len(table) >= 10 and all("kl" in row for row in table)  # every candidate judged
    # the explicit loop: each candidate pruned for real, with its own config, measured on the same held-out rows
    explicit = []
    for row in table:
        _, own = _pruned(
            model,
            method=row["method"],
            allocation=row["allocation"],
            method_kwargs=row["method_kwargs"],
            ratio=0.5,
            calibration=rows,
        )
        explicit.append(own.quality["kl"])
        assert row["kl"] == pytest.approx(own.quality["kl"], rel=1e-4, abs=1e-6)  # masking = slicing
    best = min(range(len(explicit)), key=lambda i: (explicit[i], i))
    assert plan.search["chosen"] == best
    chosen = table[best]
    assert plan.method == chosen["method"] and plan.config["allocation"] == chosen["allocation"]
    assert plan.quality["kl"] == pytest.approx(min(explicit), rel=1e-4, abs=1e-6)  # the applied plan is the winner
    assert plan.search["requested"] == {"method": "auto", "allocation": "auto"}


def test_candidates_come_from_the_registries(fixture):
    model, rows = fixture
    job = prepare(model, MoEPruneConfig(method="auto", ratio=0.5, calibration=rows, **SETTINGS))
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
    job = prepare(model, MoEPruneConfig(method="reap", allocation="auto", ratio=0.5, calibration=rows, **SETTINGS))
    assert {m for m, _, _ in candidates(job)} == {"reap"}
    allocations = [a for _, a, _ in candidates(job)]
    assert allocations[0] == "uniform" and "global" in allocations and "evolutionary" not in allocations


def test_time_budget_bounds_the_search(fixture):
    model, rows = fixture
    _, plan = _pruned(model, method="auto", ratio=0.5, calibration=rows, time_budget=0.0)
    judged = [row for row in plan.search["candidates"] if "kl" in row]
    assert len(judged) == 1 and plan.search["chosen"] == 0  # the first candidate is always judged
    assert all(row.get("skipped") == "time budget spent" for row in plan.search["candidates"][1:])


def test_auto_needs_held_out_rows_and_says_so_before_calibration(fixture):
    model, rows = fixture
    with pytest.raises(ValueError, match="eval_fraction"):
        MoEPruneConfig(method="auto", ratio=0.5, calibration=rows, eval_fraction=0.0)
    with pytest.raises(ValueError, match="time_budget"):
        MoEPruneConfig(method="auto", ratio=0.5, calibration=rows, time_budget=-1)


def test_the_search_table_is_saved_and_reloads(fixture, tmp_path):
    model, rows = fixture
    pruned, plan = _pruned(model, method="auto", ratio=0.25, calibration=rows)
    pruned.save_pretrained(tmp_path / "out")
    saved = PrunePlan.load(tmp_path / "out" / "moe_pruning_plan.json")
    assert saved.search == plan.search and saved.quality == plan.quality
    card = (tmp_path / "out" / "README.md").read_text()
    assert "auto" in card and plan.method in card
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(rows[:2]).logits, pruned(rows[:2]).logits)


def test_streaming_refuses_auto_and_from_pretrained_falls_back(fixture):
    _, rows = fixture
    config = MoEPruneConfig(method="auto", ratio=0.25, calibration=rows, **SETTINGS)
    with pytest.raises(hf_moe_prune.streaming.StreamingRefused, match="auto"):
        hf_moe_prune.stream_prune(fixture_path("qwen3_moe"), config)
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=config)
    assert model.moe_pruning_plan.search is not None
