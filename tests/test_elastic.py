"""Elastic checkpoints: one checkpoint, several sizes, each loading bit-identical to a direct prune of that size."""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.calibration.observers import ExpertObserver
from hf_moe_prune.elastic import _nest, push_elastic
from hf_moe_prune.plan import BlockPlan, PrunePlan
from hf_moe_prune.reshape import slice_block
from hf_moe_prune.testing import tiny_model
from hf_moe_prune.testing.hub_environment import hub_environment
from hf_moe_prune.testing.hub_server import HubServer

from .conftest import HELD_OUT

RATIOS = (0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def stats(held_out_fixture):
    model, rows = held_out_fixture
    return hf_moe_prune.calibrate(model, {**HELD_OUT, "calibration": rows}, progress=False)


@pytest.fixture(scope="module")
def elastic(held_out_fixture, stats, tmp_path_factory):
    """Elastic checkpoints of the trained fixture, uniform and global, and their `moe_elastic` blocks."""
    model, _ = held_out_fixture
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = {}
    for allocation in ("uniform", "global"):
        path = tmp_path_factory.mktemp("elastic") / allocation
        config = MoEPruneConfig(ratio=0.5, allocation=allocation, statistics=stats, batch_size=4)
        saved[allocation] = (path, hf_moe_prune.save_elastic(model, path, config, RATIOS, progress=False))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the experts were put back in their order
    return saved


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _direct(model, stats, ratio, allocation):
    pruned = copy.deepcopy(model)
    config = MoEPruneConfig(ratio=ratio, allocation=allocation, statistics=stats, batch_size=4)
    return pruned, hf_moe_prune.prune(pruned, config, progress=False)


def _kept(plan):
    return {b.name: b.kept for b in plan.blocks}


def _refuse_calibration(self):
    raise AssertionError("loading a size must not calibrate")


@pytest.fixture
def no_calibration(monkeypatch):
    monkeypatch.setattr(ExpertObserver, "attach", _refuse_calibration)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_each_size_loads_identical_to_a_direct_prune(held_out_fixture, stats, elastic, allocation, no_calibration):
    model, rows = held_out_fixture
    path, meta = elastic[allocation]
    previous = None
    for ratio, size in zip(RATIOS, meta["sizes"], strict=True):
        loaded = AutoModelForCausalLM.from_pretrained(path, pruning_config=MoEPruneConfig(ratio=ratio))
        direct, plan = _direct(model, stats, ratio, allocation)
        assert _kept(loaded.moe_pruning_plan) == _kept(plan) and not size["nesting"]["changed"]
        assert torch.equal(_logits(loaded, rows[:2]), _logits(direct, rows[:2]))
        assert size["parameters"] == plan.parameters["after"] == sum(p.numel() for p in loaded.parameters())
        assert size["quality"]["kl"] == pytest.approx(plan.quality["kl"], rel=1e-3)
        assert size["uniform"] == plan.is_uniform
        for name, kept in _kept(plan).items():  # nested, and a prefix of the stored order
            assert previous is None or set(kept) <= set(previous[name])
            assert set(meta["expert_order"][name][: len(kept)]) == set(kept)
        previous = _kept(plan)
    assert all(s["uniform"] for s in meta["sizes"]) == (allocation == "uniform")


def test_a_loaded_size_saves_as_an_ordinary_pruned_checkpoint(held_out_fixture, elastic, tmp_path):
    _, rows = held_out_fixture
    for allocation, ratio in (("uniform", 0.5), ("global", 0.5)):
        loaded = AutoModelForCausalLM.from_pretrained(
            elastic[allocation][0], pruning_config=MoEPruneConfig(ratio=ratio)
        )
        out = tmp_path / allocation
        loaded.save_pretrained(out)
        config = json.loads((out / "config.json").read_text())
        assert "moe_elastic" not in config and config["moe_pruning"]["ratio"] == ratio
        assert ("quantization_config" in config) == (allocation == "global")
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        assert torch.equal(_logits(reloaded, rows[:2]), _logits(loaded, rows[:2]))


def test_the_full_checkpoint_is_stock_and_computes_the_same_function(held_out_fixture, elastic):
    model, rows = held_out_fixture
    path, meta = elastic["global"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and "quantization_config" not in config
    assert config["num_local_experts"] == 16 and meta["expert_order"] != {
        n: list(range(16)) for n in meta["expert_order"]
    }
    full = AutoModelForCausalLM.from_pretrained(path)  # no pruning_config: transformers' own loading
    assert not hasattr(full, "moe_pruning_plan")
    torch.testing.assert_close(_logits(full, rows[:2]), _logits(model, rows[:2]), rtol=1e-4, atol=1e-4)
    readme = (path / "README.md").read_text()
    assert "| 0.5 | 32 |" in readme and "MoEPruneConfig(ratio=0.75)" in readme and "elastic" in readme


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "gpt_oss", "ernie4_5_moe"])
def test_permuting_experts_keeps_the_function(family):
    """Router rows, expert tensors, biases and score-correction biases move together."""
    model = tiny_model(family, **({"n_group": 1, "topk_group": 1} if family == "deepseek_v3" else {}))
    for block in find_blocks(model):
        for name, tensor in block.module.named_buffers():
            if "bias" in name:
                tensor.copy_(torch.randn_like(tensor.float()).to(tensor.dtype))  # make selection biases matter
    ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    before, state = _logits(model, ids), {k: v.clone() for k, v in model.state_dict().items()}
    orders = {}
    for block in find_blocks(model):
        orders[block.name] = torch.randperm(block.num_experts, generator=torch.Generator().manual_seed(1)).tolist()
        slice_block(block, orders[block.name])
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-4, atol=1e-5)
    for block in find_blocks(model):
        slice_block(block, sorted(range(block.num_experts), key=orders[block.name].__getitem__))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_tiny_family_with_score_correction_biases_round_trips(tmp_path, monkeypatch):
    model = tiny_model("deepseek_v3", n_group=1, topk_group=1)
    for block in find_blocks(model):
        block.router.e_score_correction_bias.copy_(torch.randn(block.num_experts) * 0.1)
    rows = torch.randint(1, 300, (8, 16), generator=torch.Generator().manual_seed(0))
    stats = hf_moe_prune.calibrate(model, {"calibration": rows, "seq_len": 16, "eval_fraction": 0.25}, progress=False)
    monkeypatch.setattr(ExpertObserver, "attach", _refuse_calibration)
    hf_moe_prune.save_elastic(model, tmp_path / "e", stats, ratios=(0.25, 0.5), progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "e", pruning_config=MoEPruneConfig(ratio=0.5))
    direct = copy.deepcopy(model)
    hf_moe_prune.prune(direct, MoEPruneConfig(ratio=0.5, statistics=stats), progress=False)
    assert torch.equal(_logits(loaded, rows[:2]), _logits(direct, rows[:2]))


def test_nesting_is_enforced_where_independent_plans_do_not_nest():
    def plan(kept):
        scores = [[8, 7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7, 8]]
        return PrunePlan("reap", "qwen3_moe", [BlockPlan(f"b{i}", i, 8, k, scores[i]) for i, k in enumerate(kept)])

    previous = plan([[0, 1, 2, 3, 4, 5], [6, 7]])
    nested = _nest(plan([[0, 1], [4, 5, 6, 7]]), previous)  # layer 1 wants 4 experts but kept 2 before
    assert [b.kept for b in nested.blocks] == [[0, 1, 2, 3], [6, 7]]  # the cap's 2 experts go to layer 0's best
    nested = _nest(plan([[4, 5], [3, 4, 6, 7]]), previous)  # a layer already nested keeps its own choice
    assert [b.kept for b in nested.blocks] == [[0, 1, 4, 5], [6, 7]]
    assert _nest(plan([[4, 5], [6, 7]]), previous).blocks[0].kept == [4, 5]  # nested plans are left alone


def test_a_size_changed_by_nesting_is_recorded_and_loads_as_recorded(held_out_fixture, stats, tmp_path):
    model, rows = held_out_fixture  # joint-choice methods need not nest on their own
    config = MoEPruneConfig(method="hope", ratio=0.5, statistics=stats, batch_size=4)
    meta = hf_moe_prune.save_elastic(model, tmp_path / "hope", config, (0.25, 0.4, 0.5), progress=False)
    changed = [s for s in meta["sizes"] if s["nesting"]["changed"]]
    assert changed and all(s["nesting"]["independent_quality"]["kl"] is not None for s in changed)
    ratio = changed[-1]["ratio"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hope", pruning_config=MoEPruneConfig(ratio=ratio))
    direct = hf_moe_prune.apply_plan(copy.deepcopy(model), loaded.moe_pruning_plan)
    assert torch.equal(_logits(loaded, rows[:2]), _logits(direct, rows[:2]))


def test_an_unknown_ratio_is_refused_with_the_sizes(elastic):
    with pytest.raises(ValueError, match=r"(?s)ratio=0.25 \(48 experts.*ratio=0.75 \(16 experts.*not at ratio=0.4"):
        AutoModelForCausalLM.from_pretrained(elastic["uniform"][0], pruning_config=MoEPruneConfig(ratio=0.4))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"method": "compel"}, "learns from gradients"),
        ({"method": "auto"}, "judges candidate plans"),
        ({"allocation": "evolutionary"}, "re-runs the model"),
        ({"compensation": "merge"}, "changes the kept experts' weights"),
        ({"compensation": "fisher"}, "re-runs blocks"),
        ({"healing": 5}, "healing trains"),
        ({"method": "tenp"}, "neuron pruning"),
        ({"allocation": [8, 8, 8, 8], "ratio": None}, "explicit per-layer counts"),
    ],
)
def test_requests_one_set_of_weights_cannot_serve_fail_before_calibration(
    held_out_fixture, request_, message, tmp_path
):
    model, rows = held_out_fixture

    def no(*args, **kwargs):
        raise AssertionError("calibrated before refusing")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hf_moe_prune.elastic.calibrate", no)
        config = MoEPruneConfig(**{"ratio": 0.5, "calibration": rows, **request_})
        with pytest.raises(ValueError, match=message):
            hf_moe_prune.save_elastic(model, tmp_path / "e", config, progress=False)
    assert not (tmp_path / "e").exists()


def test_group_limited_routing_and_pruned_models_are_refused(held_out_fixture, stats, tmp_path):
    grouped = tiny_model("deepseek_v3")  # n_group=2
    with pytest.raises(ValueError, match="routes within expert groups"):
        hf_moe_prune.save_elastic(grouped, tmp_path / "g", {"calibration": ["x"]}, progress=False)
    pruned, _ = _direct(held_out_fixture[0], stats, 0.5, "uniform")
    with pytest.raises(ValueError, match="already pruned"):
        hf_moe_prune.save_elastic(pruned, tmp_path / "p", stats, progress=False)


def test_the_save_never_replaces_a_folder_that_is_not_a_model(held_out_fixture, stats, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold only a model"):
        hf_moe_prune.save_elastic(held_out_fixture[0], tmp_path, stats, overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt"
    ]


def test_push_publishes_one_repository_that_loads_each_size(held_out_fixture, elastic, tmp_path):
    _, rows = held_out_fixture
    path, _ = elastic["global"]
    with HubServer(str(tmp_path / "hub")) as server, hub_environment(server, tmp_path / "hf_home"):
        info = push_elastic(path, "tester/elastic")
        repo = server.repos["tester/elastic"]
        assert len(repo.commits) == 2 and info.oid == repo.branches["main"]
        assert "moe_elastic_plans.json" in repo.head("main").files
        assert b'"tester/elastic", pruning_config' in server.read("tester/elastic", "README.md")
        hub = AutoModelForCausalLM.from_pretrained("tester/elastic", pruning_config=MoEPruneConfig(ratio=0.5))
        full = AutoModelForCausalLM.from_pretrained("tester/elastic")
    local = AutoModelForCausalLM.from_pretrained(path, pruning_config=MoEPruneConfig(ratio=0.5))
    assert torch.equal(_logits(hub, rows[:2]), _logits(local, rows[:2]))
    assert sum(b.num_experts for b in find_blocks(full)) == 64


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from transformers import AutoModelForCausalLM
    def high_water():  # VmHWM (KiB), reset by exec
        return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
    base = high_water()
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], pruning_config=MoEPruneConfig(ratio=0.75))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_bytes": (high_water() - base) * 1024, "size_bytes": size}))
    """
)


def test_loading_the_smallest_size_peaks_below_the_full_model(tmp_path):
    """A ~150 MB checkpoint (6 layers of 32 experts): its quarter size loads reading only a quarter of the experts."""
    config = AutoConfig.for_model(
        "qwen3_moe",
        vocab_size=512,
        hidden_size=256,
        intermediate_size=256,
        moe_intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=32,
        num_experts_per_tok=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = hf_moe_prune.calibrate(model, {"calibration": rows, "seq_len": 32, "eval_fraction": 0.25}, progress=False)
    hf_moe_prune.save_elastic(model, tmp_path / "big", stats, ratios=(0.75,), progress=False)
    del model
    (tmp_path / "measure.py").write_text(MEMORY_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(tmp_path / "measure.py"), str(tmp_path / "big")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["size_bytes"] < 0.3 * full_bytes
    assert result["peak_bytes"] < 0.6 * full_bytes, (result, full_bytes)


def test_cli_prune_elastic_writes_a_checkpoint_that_loads_each_size(tmp_path, capsys):
    from hf_moe_prune.cli import main

    out = tmp_path / "elastic"
    small = ["--num-samples", "12", "--seq-len", "64", "--quiet"]
    assert main(["prune", "--elastic", "0.25,0.5", "--output", str(out), *small]) == 0
    assert "ratio 0.5:" in capsys.readouterr().out
    sizes = json.loads((out / "config.json").read_text())["moe_elastic"]["sizes"]
    assert [s["ratio"] for s in sizes] == [0.25, 0.5]
    loaded = AutoModelForCausalLM.from_pretrained(out, pruning_config=MoEPruneConfig(ratio=0.5))
    assert {b.num_kept for b in loaded.moe_pruning_plan.blocks} == {8}
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["prune", "--elastic", "0.25,2", "--output", str(tmp_path / "x")])
    assert exit_.value.code == 2
