"""Crafted plans and pruned-checkpoint metadata fail cleanly, naming the field, before anything is allocated.

Issue 15, item 8: plans keeping fewer experts than top-k (or none), float or string expert indices, a plan that is not
a JSON object, and a checkpoint whose `quantization_config` claims 3·10⁸ experts (or experts that wide). Each defect
has a test failing on the code before `hf_moe_prune.validation`; two fuzz tests throw random types, sizes and nesting
at the plan JSON and at the checkpoint metadata.
"""

import copy
import json
import random
import re
import shutil
import time
import tracemalloc

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import BlockPlan, MoEPruneConfig, PrunePlan, cli, find_blocks
from hf_moe_prune.integration.quantizer import _shrink_skeleton
from hf_moe_prune.testing import save_tiny_model, tiny_config, tiny_model, tiny_tokenizer

CRAFTED = 300_000_000  # experts claimed by a crafted checkpoint: `list(range(CRAFTED))` alone is 3.6 GB
MAX_PEAK = 100 * 2**20
LAYERS = ("model.layers.0.mlp", "model.layers.1.mlp")  # the tiny qwen3_moe: 8 experts, top-2, width 16


def _plan_dict(**block0):
    """A valid plan of the tiny qwen3_moe, touching every field (neurons too); `block0` overrides its first block."""
    first = {"name": LAYERS[0], "layer_idx": 0, "num_experts": 8, "kept": [0, 2, 5, 7], "scores": [0.5] * 8}
    first.update(neurons={"2": [0, 3, 9], "7": list(range(12))}, intermediate_size=16)
    return {
        "method": "reap",
        "model_type": "qwen3_moe",
        "ratio": 0.5,
        "base_model": "tiny",
        "calibration": {"rows": 8, "sources": ["text"]},
        "config": {"method": "reap", "ignore": [], "method_kwargs": {}},
        "versions": {"hf_moe_prune": hf_moe_prune.__version__},
        "stats_seconds": 1.5,
        "parameters": {"before": 100, "after": 50},
        "unit": "neuron",
        "neuron_schedule": {"keep_whole": [0.5, 0.1]},
        "blocks": [{**first, **block0}, {"name": LAYERS[1], "layer_idx": 1, "num_experts": 8, "kept": [1, 2, 3]}],
    }


def _skeleton():
    """The model skeleton `from_pretrained` shrinks before a pruned checkpoint's weights load (meta tensors)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(tiny_config("qwen3_moe"))


def _peak(function):
    """`(exception raised or None, peak bytes allocated by Python while running function)`."""
    tracemalloc.start()
    try:
        function()
        error = None
    except Exception as caught:  # the caller asserts on it
        error = caught
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model("qwen3_moe", tmp_path_factory.mktemp("safety") / "base")


@pytest.fixture(scope="module")
def nonuniform(tmp_path_factory):
    """A non-uniform checkpoint saved by the library (its config carries `experts_per_layer`)."""
    model = tiny_model("qwen3_moe")
    config = MoEPruneConfig(method="reap", ratio=0.5, allocation="global", calibration=["some text " * 200])
    plan = hf_moe_prune.prune(model, config, tokenizer=tiny_tokenizer(), progress=False)
    assert not plan.is_uniform
    folder = tmp_path_factory.mktemp("safety") / "nonuniform"
    model.save_pretrained(folder)
    return folder


def _edit_quantization_config(folder, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    quant = config.get("quantization_config") or config["text_config"]["quantization_config"]
    edit(quant)
    path.write_text(json.dumps(config))


# Item 8: plans


@pytest.mark.parametrize("kept", [[3], []], ids=["below-top-k", "none"])
def test_apply_plan_refuses_fewer_experts_than_top_k_and_leaves_the_model_alone(kept):
    model = tiny_model("qwen3_moe")
    blocks = find_blocks(model)
    plan = PrunePlan(
        "manual", "qwen3_moe", [BlockPlan(b.name, b.layer_idx, 8, k) for b, k in zip(blocks, [[0, 1, 2, 3], kept])]
    )
    with pytest.raises(ValueError, match=r"blocks\[1\]\.kept.*top-k"):
        hf_moe_prune.apply_plan(model, plan)
    assert [b.num_experts for b in find_blocks(model)] == [8, 8]  # refused before the first block was sliced


def test_apply_plan_refuses_float_indices():
    model = tiny_model("qwen3_moe")
    plan = PrunePlan("manual", "qwen3_moe", [BlockPlan(n, i, 8, [1.5, 1.2]) for i, n in enumerate(LAYERS)])
    with pytest.raises(TypeError, match=re.escape("blocks[0].kept[0]: expected an int expert index, got 1.5")):
        hf_moe_prune.apply_plan(model, plan)


@pytest.mark.parametrize(
    "data, error, message",
    [
        (_plan_dict(kept=[1.5, 1.2]), TypeError, "blocks[0].kept[0]: expected an int expert index, got 1.5"),
        (_plan_dict(kept=["1", "2"]), TypeError, "blocks[0].kept[0]: expected an int expert index, got '1'"),
        (_plan_dict(kept=[True, 2]), TypeError, "blocks[0].kept[0]: expected an int expert index, got True"),
        (_plan_dict(kept=[1, 1, 2]), ValueError, "blocks[0].kept[1]: expert 1 is listed twice"),
        (_plan_dict(kept=[0, 8]), ValueError, "blocks[0].kept[1]: expert index 8 is out of range"),
        (_plan_dict(num_experts=CRAFTED), ValueError, "blocks[0].num_experts: expected an int expert count in"),
        (_plan_dict(scores=[float("nan")] * 8), ValueError, "blocks[0].scores[0]: expected a finite number"),
        (_plan_dict(neurons={"3": [0]}), ValueError, "blocks[0].neurons['3']: expert 3 has a neuron list but is"),
        (_plan_dict(neurons={"2": [0, 16]}), ValueError, "blocks[0].neurons['2']: neuron indices must be distinct"),
        (_plan_dict(neurons={"x": [0]}), TypeError, "blocks[0].neurons['x']: expected an int expert index as key"),
        (_plan_dict(kpet=[0, 1]), ValueError, "blocks[0]: unknown key 'kpet'; did you mean 'kept'?"),
        ({**_plan_dict(), "metod": "reap"}, ValueError, "plan: unknown key 'metod'; did you mean 'method'?"),
        ([1, 2], TypeError, "plan: expected a JSON object, got [1, 2]"),
        ({**_plan_dict(), "blocks": 3}, TypeError, "blocks: expected a list of block objects, got 3"),
        ({**_plan_dict(), "blocks": [[]]}, TypeError, "blocks[0]: expected a block object, got []"),
    ],
)
def test_plan_dict_errors_name_the_field(data, error, message):
    with pytest.raises(error, match=re.escape(message)):
        PrunePlan.from_dict(data)


def test_valid_plan_round_trips_and_applies():
    plan = PrunePlan.from_dict(json.loads(json.dumps(_plan_dict())))
    assert plan.blocks[0].neurons == {2: [0, 3, 9], 7: list(range(12))}
    model = tiny_model("qwen3_moe")
    hf_moe_prune.apply_plan(model, plan)
    assert [b.num_experts for b in find_blocks(model)] == [4, 3]


def test_non_finite_scores_are_saved_as_null_and_reload(tmp_path):
    plan = PrunePlan.from_dict(_plan_dict())
    plan.blocks[0].scores = [float("nan"), float("inf")] + [0.5] * 6  # NaN weights give NaN scores
    plan.save(tmp_path)
    text = (tmp_path / "moe_pruning_plan.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert PrunePlan.load(tmp_path).blocks[0].scores == [None, None] + [0.5] * 6


def test_keys_of_a_newer_library_version_are_ignored_with_a_warning(caplog):
    data = _plan_dict(new_block_field=1)
    data.update(versions={"hf_moe_prune": "999.0"}, new_field={"x": 1})
    plan = PrunePlan.from_dict(data)
    assert plan.blocks[0].kept == [0, 2, 5, 7]
    assert "new_field" in caplog.text and "new_block_field" in caplog.text and "999.0" in caplog.text


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "expected a JSON object (a pruning plan), got a JSON list"),
        ("{", "not a valid JSON plan file"),
        ("[" * 100_000 + "]" * 100_000, "not a valid JSON plan file"),  # nesting past the recursion limit
        (b"\xff\xfe{}", "not a valid JSON plan file"),
        (json.dumps(_plan_dict(kept=["1"])), "blocks[0].kept[0]: expected an int expert index, got '1'"),
    ],
)
def test_plan_file_errors_name_the_file(text, message, tmp_path):
    path = tmp_path / "moe_pruning_plan.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises((TypeError, ValueError), match=re.escape(str(path)) + ".*" + re.escape(message)):
        PrunePlan.load(tmp_path)


@pytest.mark.parametrize(
    "kept, message",
    [
        ([5], "blocks[1].kept: model.layers.1.mlp would keep 1 of 8 experts but routes every token to top-k=2"),
        ([], "blocks[1].kept: expected between 1 and num_experts=8 expert indices, got 0"),
        ([1.5, 1.2], "blocks[1].kept[0]: expected an int expert index, got 1.5"),
        (["1", "2"], "blocks[1].kept[0]: expected an int expert index, got '1'"),
        (None, "expected a JSON object (a pruning plan), got a JSON list"),
    ],
    ids=["below-top-k", "none", "float", "string", "not-an-object"],
)
def test_cli_plan_apply_refuses_crafted_plans(kept, message, base, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    data = [1, 2] if kept is None else _plan_dict()
    if kept is not None:
        data["blocks"][1]["kept"] = kept
    plan.write_text(json.dumps(data))
    output = tmp_path / "out"
    # a malformed plan is a usage error (2, before loading); one that does not fit the model a runtime failure (1)
    code = 1 if kept == [5] else 2
    assert cli.main(["plan", "apply", str(plan), base, "--output", str(output), "--quiet"]) == code
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_grouped_routing_needs_the_same_count_in_every_group():
    from hf_moe_prune.pipeline.checks import check_plan

    model = tiny_model("deepseek_v3")  # 8 experts in 2 groups of 4, top-2: at least 2 per group
    blocks = find_blocks(model)
    plan = PrunePlan("manual", "deepseek_v3", [BlockPlan(b.name, b.layer_idx, 8, [0, 1, 2, 3]) for b in blocks])
    with pytest.raises(ValueError, match=r"every group must keep 2 experts, but they keep \[4, 0\]"):
        check_plan(plan, blocks)
    for block_plan in plan.blocks:
        block_plan.kept = [0, 2]
    with pytest.raises(ValueError, match="keep at least 4"):
        check_plan(plan, blocks)
    for block_plan in plan.blocks:
        block_plan.kept = [0, 1, 4, 5]
    check_plan(plan, blocks)


# Item 8: checkpoint metadata


def test_crafted_expert_count_is_refused_before_allocating():
    skeleton = _skeleton()
    error, peak = _peak(lambda: _shrink_skeleton(skeleton, {LAYERS[0]: CRAFTED}, {}))
    assert isinstance(error, ValueError), error
    assert f"quantization_config.experts_per_layer[{LAYERS[0]!r}]" in str(error) and str(CRAFTED) in str(error)
    assert peak < MAX_PEAK, peak
    assert [b.num_experts for b in find_blocks(skeleton)] == [8, 8]


def test_crafted_expert_widths_are_refused_before_allocating():
    skeleton = _skeleton()
    error, peak = _peak(lambda: _shrink_skeleton(skeleton, {}, {LAYERS[0]: [CRAFTED] + [16] * 7}))
    assert isinstance(error, ValueError), error
    assert f"quantization_config.expert_widths[{LAYERS[0]!r}][0]" in str(error)
    assert peak < MAX_PEAK, peak


@pytest.mark.parametrize(
    "experts_per_layer, expert_widths, error, message",
    [
        ({LAYERS[0]: 1}, None, ValueError, "would keep 1 of 8 experts but routes every token to top-k=2"),
        ({LAYERS[0]: 4.0}, None, TypeError, "expected an int expert count, got 4.0"),
        ({LAYERS[0]: True}, None, TypeError, "expected an int expert count, got True"),
        ({"model.layers.0.mpl": 4}, None, ValueError, "Did you mean 'model.layers.0.mlp'?"),
        ([4, 4], None, TypeError, "quantization_config.experts_per_layer: expected an object"),
        ({LAYERS[0]: 4}, {LAYERS[0]: [8] * 8}, ValueError, "expected one width per kept expert (4), got 8"),
        (None, {LAYERS[1]: [8] * 7 + [0]}, ValueError, "expert_widths['model.layers.1.mlp'][7]: expected an int"),
        (None, {LAYERS[1]: "wide"}, TypeError, "expected a list of expert widths, got 'wide'"),
    ],
)
def test_pruned_metadata_errors_name_the_field(experts_per_layer, expert_widths, error, message):
    from hf_moe_prune.pipeline.checks import check_pruned_metadata

    with pytest.raises(error, match=re.escape(message)):
        check_pruned_metadata(find_blocks(_skeleton()), experts_per_layer, expert_widths)


def test_crafted_checkpoint_end_to_end_fails_cleanly_with_little_memory(nonuniform, tmp_path):
    reloaded = AutoModelForCausalLM.from_pretrained(nonuniform)  # the untouched checkpoint loads
    counts = [b.num_experts for b in find_blocks(reloaded)]
    assert len(set(counts)) > 1
    crafted = tmp_path / "crafted"
    shutil.copytree(nonuniform, crafted)
    _edit_quantization_config(crafted, lambda quant: quant["experts_per_layer"].update({LAYERS[0]: CRAFTED}))
    error, peak = _peak(lambda: AutoModelForCausalLM.from_pretrained(crafted))
    assert isinstance(error, ValueError), error
    assert f"quantization_config.experts_per_layer[{LAYERS[0]!r}]" in str(error)
    assert peak < MAX_PEAK, peak


def test_plan_file_that_does_not_describe_the_checkpoint_is_refused(nonuniform, tmp_path):
    crafted = tmp_path / "crafted"
    shutil.copytree(nonuniform, crafted)
    plan = json.loads((crafted / "moe_pruning_plan.json").read_text())
    plan["blocks"][0]["kept"] = plan["blocks"][0]["kept"][:2]  # still valid alone, but not these weights
    (crafted / "moe_pruning_plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="the plan file does not describe this checkpoint"):
        AutoModelForCausalLM.from_pretrained(crafted)


# Fuzz


def _junk(rng: random.Random, depth: int = 0):
    """A random JSON-ish value: wrong types, huge sizes and numbers, deep nesting, plausible small ints."""
    kind = rng.randrange(15)
    if kind == 0:
        nested = []
        for _ in range(rng.choice([5, 2000])):
            nested = [nested]
        return nested
    if kind == 1:
        return list(range(rng.choice([10, 100_000])))
    if kind == 2:
        return [rng.randrange(-2, 12) for _ in range(rng.randrange(0, 10))]
    if kind == 3:
        return {str(rng.randrange(10)): _junk(rng, depth + 1) for _ in range(3)} if depth < 3 else {}
    if kind == 4:
        return [_junk(rng, depth + 1) for _ in range(3)] if depth < 3 else []
    if kind == 5:
        return "x" * rng.randrange(0, 5000)
    return [None, True, 0, -1, 1.5, float("nan"), float("inf"), CRAFTED, 10**40, rng.randrange(-2, 12)][kind - 6]


def _sites(plan: dict) -> list:
    """Every `(container, key, anchor)` of the plan: the anchor is the field name an error about that place names."""
    out = []

    def walk(value, anchor):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            out.append((value, key, anchor))
            if isinstance(child, (dict, list)):
                walk(child, anchor)

    for key, value in plan.items():
        out.append((plan, key, key))
        if key == "blocks":
            for i, block in enumerate(value):
                out.append((value, i, "blocks"))
                walk(block, f"blocks[{i}]")
        elif isinstance(value, (dict, list)):
            walk(value, key)
    return out


def _mutate(rng: random.Random, data):
    """Change one random place of the plan; returns the new plan and the names an error must mention."""
    data = copy.deepcopy(data)
    if rng.random() < 0.05:
        return _junk(rng), ("plan",)
    container, key, anchor = rng.choice(list(_sites(data)))
    anchors = (anchor, "plan") if anchor in data else (anchor,)
    action = rng.random()
    if action < 0.7:
        container[key] = _junk(rng)
    elif action < 0.8 and isinstance(container, dict):
        del container[key]
    elif isinstance(container, dict):
        container[rng.choice([key[:-1] + "x" if isinstance(key, str) else "x", "zzz"])] = 1
    else:
        container.append(container[key])
    return data, anchors


def test_fuzz_plan_json_fails_cleanly_naming_the_field(tmp_path):
    from hf_moe_prune.pipeline.checks import check_plan

    rng = random.Random(15)
    blocks = find_blocks(tiny_model("qwen3_moe"))
    base_plan = _plan_dict()
    start, accepted = time.perf_counter(), 0
    tracemalloc.start()
    for case in range(400):
        data, anchors = _mutate(rng, base_plan)
        try:
            plan = PrunePlan.from_dict(data)
        except (TypeError, ValueError) as error:
            assert any(a in str(error) for a in anchors), (case, anchors, str(error)[:300])
            if case % 10 == 0:  # the same through a file: the message starts with the file
                path = tmp_path / f"{case}.json"
                try:
                    path.write_text(json.dumps(data))
                except (RecursionError, ValueError):
                    continue
                with pytest.raises((TypeError, ValueError), match=re.escape(str(path))):
                    PrunePlan.load(path)
            continue
        except Exception as error:  # anything else is a crash the validation missed
            pytest.fail(f"case {case}: {type(error).__name__}: {error!s:.300}")
        accepted += 1
        try:
            check_plan(plan, blocks)
        except (TypeError, ValueError):
            pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0 < accepted < 300, accepted  # both outcomes happen
    assert time.perf_counter() - start < 30
    assert peak < MAX_PEAK, peak


def _metadata_value(rng: random.Random, widths: bool):
    if rng.random() < 0.15:
        return _junk(rng)
    names = [*LAYERS, "model.layers.0.mpl", 0, None, ""]
    out = {}
    for _ in range(rng.randrange(1, 3)):
        name = rng.choice(names) if rng.random() < 0.3 else rng.choice(LAYERS)
        if not widths:
            out[name] = rng.choice([rng.randrange(-1, 10), CRAFTED, 10**40, _junk(rng)])
        elif rng.random() < 0.5:  # well-formed widths, often the right length, sometimes out of range
            values = [1, 8, 16] if rng.random() < 0.5 else [0, 1, 16, 17, CRAFTED]
            size = rng.choice([8, 8, 4, 0, 100_000])
            out[name] = [rng.choice(values) for _ in range(size)] if size < 10 else [16] * size
        else:
            out[name] = _junk(rng)
    return out


def test_fuzz_checkpoint_metadata_fails_cleanly_naming_the_field():
    from hf_moe_prune.pipeline.checks import check_pruned_metadata

    rng = random.Random(8)
    pristine = _skeleton()
    blocks = find_blocks(pristine)
    start, accepted, narrowed = time.perf_counter(), 0, 0
    tracemalloc.start()
    for case in range(400):
        experts_per_layer = _metadata_value(rng, False) if rng.random() < 0.7 else None
        expert_widths = _metadata_value(rng, True) if rng.random() < 0.5 else None
        try:
            check_pruned_metadata(blocks, experts_per_layer, expert_widths)
        except (TypeError, ValueError) as error:
            assert re.match(r"quantization_config\.(experts_per_layer|expert_widths)\b", str(error)), str(error)[:300]
            continue
        except Exception as error:
            pytest.fail(f"case {case}: {type(error).__name__}: {error!s:.300}")
        accepted += 1
        if accepted > 15 and not expert_widths:  # enough count-only shrinks (a skeleton copy is the slow part)
            continue
        skeleton = copy.deepcopy(pristine)  # what passes must shrink the skeleton without any other error
        _shrink_skeleton(skeleton, experts_per_layer or {}, expert_widths or {})
        expected = [(experts_per_layer or {}).get(name, 8) for name in LAYERS]
        assert [b.num_experts for b in find_blocks(skeleton)] == expected
        narrowed += bool(expert_widths)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0 < accepted < 300 and narrowed, (accepted, narrowed)
    assert time.perf_counter() - start < 30
    assert peak < MAX_PEAK, peak
