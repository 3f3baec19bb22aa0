"""Safety (issue 15): no silent wrong reloads, no request silently ignored, no late or cryptic failure.

One test per defect found by the bad-input campaign; each failed on the code before the fix. Saving safety is in
`test_safety_saving.py`, plans and checkpoint metadata in `test_safety_plans.py`, streaming in
`test_safety_streaming.py`.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3MoeForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.calibration import runner
from hf_moe_prune.export.portable import LOAD_HINT, MARKER, mark_config_dict, read_config_dict, unmark_config_dict
from hf_moe_prune.testing import SAMPLE_TEXT, tiny_model, tiny_tokenizer

from .conftest import CALIBRATION


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if a forward pass starts: these errors must come before calibration."""

    def forbidden(*args, **kwargs):
        raise AssertionError("calibration ran before the error")

    monkeypatch.setattr(runner.ExpertObserver, "attach", forbidden)


def _logits(model, input_ids):
    with torch.no_grad():
        out = model(input_ids=input_ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _prune_and_save(family: str, folder, **options):
    model = tiny_model(family)
    config = MoEPruneConfig(calibration=CALIBRATION, seq_len=32, **options)
    hf_moe_prune.prune(model, config, tokenizer=tiny_tokenizer(), progress=False)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


# (family, options): a plan stock transformers cannot express, for each way the layout departs from stock
NON_PORTABLE = {
    "qwen3_moe-neuron": ("qwen3_moe", {"method": "tenp", "ratio": 0.4}),
    "mixtral-counts": ("mixtral", {"method": "reap", "allocation": [6, 4]}),
    "jetmoe": ("jetmoe", {"method": "reap", "ratio": 0.5}),  # its config cannot count routed experts alone
    "hy_v4_vl-counts": ("hy_v4_vl_text", {"method": "reap", "allocation": [6, 4]}),  # multimodal parent
    "dbrx-counts": ("dbrx", {"method": "reap", "allocation": [6, 4]}),  # count nested in ffn_config
}


@pytest.fixture(scope="module")
def non_portable(tmp_path_factory):
    root = tmp_path_factory.mktemp("non_portable")
    input_ids = torch.randint(1, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    saved = {}
    for name, (family, options) in NON_PORTABLE.items():
        model = _prune_and_save(family, root / name, **options)
        assert not model.moe_pruning_plan.is_uniform
        with torch.no_grad():
            saved[name] = (str(root / name), _logits(model, input_ids))
    return saved, input_ids


def test_non_portable_checkpoints_are_refused_without_the_library(non_portable):
    """A neuron-pruned checkpoint loaded silently with random experts; per-layer counts failed without the fix."""
    saved, _ = non_portable
    folders = {name: folder for name, (folder, _) in saved.items()}
    script = textwrap.dedent(
        f"""
        import json, sys, transformers
        from transformers import AutoModelForCausalLM
        out = {{}}
        for name, folder in {folders!r}.items():
            config = json.load(open(folder + "/config.json"))
            classes = [AutoModelForCausalLM, getattr(transformers, config["architectures"][0])]
            for cls in classes:
                try:
                    cls.from_pretrained(folder)
                    out[name + ":" + cls.__name__] = "LOADED"
                except Exception as error:
                    out[name + ":" + cls.__name__] = str(error)
        assert "hf_moe_prune" not in sys.modules
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * len(NON_PORTABLE)
    for key, message in results.items():
        assert message != "LOADED", f"{key} loaded without hf_moe_prune"
        if key.endswith(":AutoModelForCausalLM"):
            assert f"model type `{MARKER}`" in message, (key, message)
        else:  # the family's own class: its strict config refuses the expert count, whose value names the fix
            assert "import hf_moe_prune" in message, (key, message)


def test_non_portable_checkpoints_reload_with_the_library(non_portable):
    saved, input_ids = non_portable
    for name, (folder, expected) in saved.items():
        config = json.loads(open(os.path.join(folder, "config.json")).read())
        cls = getattr(transformers, config["architectures"][0])
        loaders = [cls.from_pretrained, lambda path, cls=cls: cls.from_pretrained(pretrained_model_name_or_path=path)]
        if cls in AutoModelForCausalLM._model_mapping.values():
            loaders.append(AutoModelForCausalLM.from_pretrained)
        for load in loaders:
            torch.testing.assert_close(_logits(load(folder), input_ids), expected, rtol=0, atol=1e-5, msg=name)
        card = open(os.path.join(folder, "README.md")).read()
        assert "Loading needs the hf_moe_prune library installed" in card and "`import hf_moe_prune`" in card
        assert "never loaded with random experts" in card


def test_uniform_checkpoints_stay_stock(tmp_path):
    _prune_and_save("qwen3_moe", tmp_path / "u", method="reap", ratio=0.5)
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["num_experts"] == 4 and "quantization_config" not in config
    card = (tmp_path / "u" / "README.md").read_text()
    assert "Loading needs" not in card


def test_mark_round_trip_and_damaged_mark():
    config = {"model_type": "x", "num_experts": 12, "text_config": {"n_routed_experts": 8}, "hidden_size": 4}
    marked = mark_config_dict(config)
    assert marked["model_type"] == MARKER
    assert marked["num_experts"] == LOAD_HINT and marked["text_config"]["n_routed_experts"] == LOAD_HINT
    assert unmark_config_dict(marked) == {**config, "moe_pruning": {}}
    assert mark_config_dict(marked) == marked  # idempotent
    with pytest.raises(ValueError, match="no valid moe_pruning.stock_config"):
        unmark_config_dict({"model_type": MARKER})
    broken = json.loads(json.dumps(marked))
    broken["moe_pruning"]["stock_config"]["fields"]["num_experts"] = "12"
    with pytest.raises(TypeError, match=r"fields\['num_experts'\] must be an integer count"):
        unmark_config_dict(broken)


def test_neuron_pruning_with_ignored_layers_saves(tmp_path):
    """`tenp` with `ignore=` pruned, then crashed in the model card (`_neuron_shares` on None widths)."""
    model = _prune_and_save("qwen3_moe", tmp_path / "n", method="tenp", ratio=0.3, ignore=[0])
    assert model.moe_pruning_plan.blocks[0].widths is None
    card = (tmp_path / "n" / "README.md").read_text()
    assert "| 0 | 8 | 0 | full | 100.0% |" in card
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "n")
    ids = torch.randint(1, 300, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_names_are_case_insensitive():
    """`allocation="UNIFORM"` passed validation but the allocator did not recognise it: nothing was pruned."""
    config = MoEPruneConfig(
        method="REAP", ratio=0.5, allocation="UNIFORM", compensation="None", calibration=CALIBRATION
    )
    assert (config.method, config.allocation, config.compensation) == ("reap", "uniform", "none")
    model = tiny_model("qwen3_moe")
    plan = hf_moe_prune.prune(model, config, tokenizer=tiny_tokenizer(), progress=False)
    assert [b.num_kept for b in plan.blocks] == [4, 4]


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"ratio": 0.03},
            r"ratio=0.03 removes no expert: 0.03 × 8 experts per layer rounds down to 0. Use a ratio of "
            r"at least 1/8",
        ),
        ({"ratio": 0.03, "allocation": "global"}, "ratio=0.03 removes no expert"),
        ({"ratio": 0.5, "ignore": "*"}, "leaves every MoE layer whole: nothing would be pruned"),
        ({"ratio": 0.5, "ignore": [0, 1]}, "leaves every MoE layer whole: nothing would be pruned"),
        ({"allocation": [8, 8]}, "keep every expert of every MoE layer: nothing would be pruned"),
        ({"method": "tenp", "ratio": 0.001}, "ratio=0.001 removes no neuron"),
    ],
)
def test_requests_that_prune_nothing_are_refused(options, message, no_calibration):
    with pytest.raises(ValueError, match=message):
        hf_moe_prune.prune(
            tiny_model("qwen3_moe"),
            MoEPruneConfig(**{"method": "reap", **options}, calibration=CALIBRATION),
            tokenizer=tiny_tokenizer(),
        )


def test_ignore_given_as_one_string_is_one_pattern():
    config = MoEPruneConfig(method="reap", ratio=0.5, ignore="model.layers.0.*", calibration=CALIBRATION)
    assert config.ignore == ["model.layers.0.*"]
    plan = hf_moe_prune.prune(tiny_model("qwen3_moe"), config, tokenizer=tiny_tokenizer(), progress=False)
    assert [b.num_kept for b in plan.blocks] == [8, 4]


def test_path_by_keyword_streams_and_reprunes(checkpoints):
    """With the path by keyword, streaming fell back to a full load and re-pruning did nothing."""
    path = checkpoints["qwen3_moe"]
    config = MoEPruneConfig(method="reap", ratio=0.5, calibration=CALIBRATION, seq_len=32, streaming=True)
    model = Qwen3MoeForCausalLM.from_pretrained(pretrained_model_name_or_path=path, pruning_config=config)
    assert "streaming" in model.moe_pruning_plan.calibration


def test_repruning_a_pruned_checkpoint_by_keyword(tmp_path):
    _prune_and_save("qwen3_moe", tmp_path / "p", method="reap", allocation=[6, 4])
    again = MoEPruneConfig(method="frequency", allocation=[4, 2], calibration=CALIBRATION, seq_len=32)
    model = Qwen3MoeForCausalLM.from_pretrained(pretrained_model_name_or_path=tmp_path / "p", pruning_config=again)
    assert [b.num_kept for b in model.moe_pruning_plan.blocks] == [4, 2]


@pytest.mark.parametrize(
    "method, kwargs, error, message",
    [
        ("reap", {"reduc": "sum"}, ValueError, "'reap' has no option 'reduc'. Did you mean 'reduce'?"),
        ("ean", {"reduce": "avg"}, ValueError, "reduce must be 'sum' or 'mean', got 'avg'"),
        ("frequency", {"reduce": "sum"}, ValueError, "'frequency' has no option 'reduce'. Its options: none"),
        ("random", {"seed": 3}, ValueError, "'random' has no option 'seed'"),
        ("tenp", {"importance": "both"}, ValueError, "importance must be 'direction' or 'magnitude'"),
        ("tenp", {"keep_hole": 0.1}, ValueError, "Did you mean 'keep_whole'?"),
        ("diep", {"step": 3}, ValueError, "'diep' has no option 'step'. Did you mean 'steps'?"),
        ("diep", {"steps": "3"}, TypeError, r"method_kwargs\['steps'\] must be int"),
        ("compel", {"router_paths": False}, ValueError, "Did you mean 'router_path'?"),
        ("reap", {"keep_whole": 0.2}, ValueError, "shape neuron pruning; with unit='expert' they would be ignored"),
    ],
)
def test_method_options_are_checked_before_calibration(method, kwargs, error, message, no_calibration):
    """Unknown options failed after calibration (reap, ean, ...) or were silently ignored (a diep `step` typo)."""
    with pytest.raises(error, match=message):
        MoEPruneConfig(method=method, ratio=0.5, method_kwargs=kwargs, calibration=CALIBRATION)


def test_misspelled_config_keyword_is_refused():
    with pytest.raises(TypeError, match="unexpected keyword 'ration'; did you mean 'ratio'?"):
        MoEPruneConfig(method="reap", ration=0.5)
    with pytest.raises(TypeError, match="unexpected keyword 'num_sample'; did you mean 'num_samples'?"):
        Qwen3MoeForCausalLM.from_pretrained("unused", pruning_config={"ratio": 0.5, "num_sample": 4})


def test_reloaded_config_keeps_keys_of_newer_versions():
    config = MoEPruneConfig.from_dict({"quant_method": "moe_prune", "experts_per_layer": {"a": 2}, "new_field": 1})
    assert config.new_field == 1


def test_float_token_ids_are_refused(no_calibration):
    """A float tensor was silently cast to token ids (all 0 for probabilities)."""
    with pytest.raises(TypeError, match="must be an integer tensor, got torch.float32"):
        hf_moe_prune.prune(tiny_model("qwen3_moe"), MoEPruneConfig("reap", 0.5, calibration=torch.rand(4, 16)))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        hf_moe_prune.prune(tiny_model("qwen3_moe"), MoEPruneConfig("reap", 0.5, calibration=torch.full((2, 8), 10**6)))


@pytest.mark.parametrize("method", ["compel", "diep"])
def test_gradient_methods_under_no_grad(method):
    """Under `torch.no_grad()` they failed after calibration with an unexplained autograd error."""
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    options = {"method_kwargs": {"steps": 3}} if method == "diep" else {"compensation": "none"}
    config = MoEPruneConfig(method, 0.5, calibration=rows, batch_size=2, **options)
    with torch.no_grad():
        plan = hf_moe_prune.prune(tiny_model("qwen3_moe"), config, progress=False)
    assert sum(b.num_kept for b in plan.blocks) == 8
    with torch.inference_mode(), pytest.raises(ValueError, match="torch.inference_mode"):
        hf_moe_prune.prune(tiny_model("qwen3_moe"), config, progress=False)


def test_nan_weights_give_a_clear_error():
    """NaN weights gave NaN scores and a degenerate plan, with no warning."""
    model = tiny_model("qwen3_moe")
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[3, 0, 0] = float("nan")
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"gave \d+ non-finite \(NaN or inf\) expert scores in model.layers.1.mlp"):
        hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.5, calibration=rows), progress=False)
    assert model.model.layers[1].mlp.experts.down_proj.shape[0] == 8  # nothing changed


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"data.jsonl:3: not a JSON line"):
        hf_moe_prune.prune(
            tiny_model("qwen3_moe"), MoEPruneConfig("reap", 0.5, calibration=str(data)), tokenizer=tiny_tokenizer()
        )
    data.write_bytes(b'{"text": "fine"}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: not UTF-8 text"):
        hf_moe_prune.prune(
            tiny_model("qwen3_moe"), MoEPruneConfig("reap", 0.5, calibration=str(data)), tokenizer=tiny_tokenizer()
        )


def test_sample_text_still_prunes():
    """The checks above leave an ordinary request alone."""
    config = MoEPruneConfig("reap", 0.5, calibration=[SAMPLE_TEXT] * 4, seq_len=32)
    plan = hf_moe_prune.prune(tiny_model("qwen3_moe"), config, tokenizer=tiny_tokenizer(), progress=False)
    assert [b.num_kept for b in plan.blocks] == [4, 4]


def test_from_pretrained_streams_when_it_can(checkpoints):
    """Pruning while loading peaked at ~9x the pruned size: it now streams by default whenever the request allows."""
    path = checkpoints["qwen3_moe"]
    config = MoEPruneConfig("reap", 0.5, calibration=CALIBRATION)
    auto = AutoModelForCausalLM.from_pretrained(path, pruning_config=config, attn_implementation="eager")
    assert "streaming" in auto.moe_pruning_plan.calibration
    assert auto.config._attn_implementation == "eager"  # the options Auto* classes fold into the config still hold
    full = AutoModelForCausalLM.from_pretrained(
        path, pruning_config=MoEPruneConfig("reap", 0.5, calibration=CALIBRATION, streaming=False)
    )
    assert "streaming" not in full.moe_pruning_plan.calibration
    assert [b.kept for b in auto.moe_pruning_plan.blocks] == [b.kept for b in full.moe_pruning_plan.blocks]
    ids = torch.randint(1, 300, (1, 12))
    torch.testing.assert_close(_logits(auto, ids), _logits(full, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "options, kwargs",
    [
        ({"method": "frequency", "ratio": 0.5, "allocation": "outlier"}, {}),  # reads block inputs: whole model
        ({"method": "reap", "ratio": 0.5}, {"ignore_mismatched_sizes": True}),  # an option streaming does not take
        ({"method": "reap", "ratio": 0.5}, {"device_map": "auto"}),
    ],
)
def test_automatic_streaming_falls_back_to_a_full_load(checkpoints, options, kwargs):
    config = MoEPruneConfig(calibration=CALIBRATION, **options)
    model = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], pruning_config=config, **kwargs)
    assert "streaming" not in model.moe_pruning_plan.calibration
    with pytest.raises(ValueError, match="Streaming|streaming"):
        config.streaming = True
        AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], pruning_config=config, **kwargs)


def test_newer_format_is_refused_and_older_still_loads(tmp_path):
    _prune_and_save("qwen3_moe", tmp_path / "p", method="reap", allocation=[6, 4])
    plan_file, config_file = tmp_path / "p" / "moe_pruning_plan.json", tmp_path / "p" / "config.json"
    plan, config = json.loads(plan_file.read_text()), json.loads(config_file.read_text())
    assert plan["format_version"] == 1 and config["moe_pruning"]["format_version"] == 1
    del plan["format_version"]  # a plan written before format versions existed
    plan_file.write_text(json.dumps(plan))
    assert hf_moe_prune.PrunePlan.load(tmp_path / "p").format_version == 1
    plan["format_version"] = 2
    plan_file.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="format 2 by a newer hf_moe_prune.*pip install -U hf-moe-prune"):
        hf_moe_prune.PrunePlan.load(tmp_path / "p")
    config["moe_pruning"]["format_version"] = 2
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json moe_pruning: written in pruning format 2"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_automatic_streaming_only_for_cpu_targets(checkpoints):
    from hf_moe_prune.integration.loading import _streams

    path = checkpoints["qwen3_moe"]
    config = read_config_dict(path, {})
    assert _streams(Qwen3MoeForCausalLM, path, config, (path,), {})
    assert _streams(Qwen3MoeForCausalLM, path, config, (path,), {"device_map": "cpu"})
    assert not _streams(Qwen3MoeForCausalLM, path, config, (path,), {"device_map": "cuda:0"})  # calibrates on the GPU
    assert not _streams(transformers.Qwen3MoeModel, path, config, (path,), {})  # a base-model class: other key names
