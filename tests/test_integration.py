import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, Qwen3MoeForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, PrunePlan, find_blocks

from .conftest import CALIBRATION, FAMILIES


def _config(**kwargs):
    kwargs = {"method": "reap", "ratio": 0.5, "calibration": CALIBRATION, "seq_len": 32, "num_samples": 8, **kwargs}
    return MoEPruneConfig(**kwargs)


def _tensors(folder):
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_while_loading_save_and_reload_without_the_library(family, checkpoints, input_ids, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoints[family], pruning_config=_config())
    assert [b.num_experts for b in find_blocks(model)] == [4, 4]
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")
    logits = model(input_ids).logits
    out = tmp_path / "pruned"
    model.save_pretrained(out)

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "pruning_config" not in config
    assert config["moe_pruning"]["method"] == "reap"
    plan = PrunePlan.load(out)
    assert [b.num_kept for b in plan.blocks] == [4, 4] and plan.is_uniform
    assert (out / "README.md").read_text().count("expert-pruning") >= 1

    # A fresh process that never imports hf_moe_prune loads the compact stock checkpoint.
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(out)!r})
        ids = torch.tensor({input_ids.tolist()})
        torch.save(model(ids).logits, {str(tmp_path / "logits.pt")!r})
        assert "hf_moe_prune" not in sys.modules
        assert not getattr(model, "is_quantized", False)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), logits, rtol=0, atol=0)

    # Re-saving the reloaded model gives identical tensors.
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    reloaded.save_pretrained(tmp_path / "again")
    first, second = _tensors(out), _tensors(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_uniform_plan_reloads_through_the_quantizer(family, checkpoints, input_ids, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoints[family], quantization_config=_config(ratio=None, allocation=[6, 3])
    )
    assert [b.num_experts for b in find_blocks(model)] == [6, 3]
    logits = model(input_ids).logits
    model.save_pretrained(tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "moe_prune"
    assert saved["quantization_config"]["experts_per_layer"] == {"model.layers.0.mlp": 6, "model.layers.1.mlp": 3}
    assert "import hf_moe_prune" in (tmp_path / "pruned" / "README.md").read_text()

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert [b.num_experts for b in find_blocks(reloaded)] == [6, 3]
    torch.testing.assert_close(reloaded(input_ids).logits, logits, rtol=0, atol=0)
    assert reloaded.moe_pruning_plan.experts_per_layer == {"model.layers.0.mlp": 6, "model.layers.1.mlp": 3}
    reloaded.save_pretrained(tmp_path / "again")
    first, second = _tensors(tmp_path / "pruned"), _tensors(tmp_path / "again")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_works_on_pruned_models(family, checkpoints, tokenizer):
    for config in (_config(), _config(ratio=None, allocation=[5, 3]), _config(method="random")):
        model = AutoModelForCausalLM.from_pretrained(checkpoints[family], pruning_config=config)
        prompt = tokenizer("Mixture-of-Experts", return_tensors="pt")
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert out.shape == (1, prompt["input_ids"].shape[1] + 8)


def test_pruning_config_on_concrete_and_base_classes(checkpoints):
    model = Qwen3MoeForCausalLM.from_pretrained(checkpoints["qwen3_moe"], pruning_config=_config(method="frequency"))
    assert [b.num_experts for b in find_blocks(model)] == [4, 4]
    base = AutoModel.from_pretrained(
        checkpoints["qwen3_moe"], pruning_config=_config(num_experts_to_keep=6, ratio=None)
    )
    assert [b.num_experts for b in find_blocks(base)] == [6, 6]


def test_functional_api_with_token_ids_needs_no_tokenizer(checkpoints, input_ids, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoints["mixtral"])
    ids = torch.randint(1, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    config = MoEPruneConfig(method="ean", ratio=0.25, calibration=ids, eval_fraction=0)  # every row scored
    plan = hf_moe_prune.prune(model, config, progress=False)
    assert [b.num_kept for b in plan.blocks] == [6, 6] and plan.calibration["tokens"] == 8 * 32
    model.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_local_experts"] == 6


def test_same_plan_from_loader_and_functional_api(checkpoints, tokenizer):
    loaded = AutoModelForCausalLM.from_pretrained(checkpoints["qwen2_moe"], pruning_config=_config())
    model = AutoModelForCausalLM.from_pretrained(checkpoints["qwen2_moe"])
    plan = hf_moe_prune.prune(model, _config(), tokenizer=tokenizer, progress=False)
    assert [b.kept for b in plan.blocks] == [b.kept for b in loaded.moe_pruning_plan.blocks]


def test_plan_replays_without_calibration(checkpoints, input_ids, tmp_path):
    pruned = AutoModelForCausalLM.from_pretrained(checkpoints["olmoe"], pruning_config=_config(method="soft_count"))
    plan = PrunePlan.from_dict(json.loads(json.dumps(pruned.moe_pruning_plan.to_dict())))
    model = AutoModelForCausalLM.from_pretrained(checkpoints["olmoe"])
    hf_moe_prune.apply_plan(model, plan)
    torch.testing.assert_close(model(input_ids).logits, pruned(input_ids).logits, rtol=0, atol=0)


def test_pruning_an_already_non_uniformly_pruned_checkpoint_prunes_further(checkpoints, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoints["qwen3_moe"], pruning_config=_config(ratio=None, allocation=[6, 4])
    )
    model.save_pretrained(tmp_path / "p1")
    with pytest.raises(ValueError, match="needs a tokenizer"):  # the folder has no tokenizer files
        AutoModelForCausalLM.from_pretrained(
            tmp_path / "p1", pruning_config=_config(ratio=None, num_experts_to_keep=3)
        )
    tokenizer.save_pretrained(tmp_path / "p1")
    again = AutoModelForCausalLM.from_pretrained(
        tmp_path / "p1", pruning_config=_config(ratio=None, num_experts_to_keep=3)
    )
    assert [b.num_experts for b in find_blocks(again)] == [3, 3]


def test_ignored_layers_keep_every_expert(checkpoints, tmp_path):
    config = _config(ignore=["model.layers.0.*"])
    model = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], pruning_config=config)
    assert [b.num_experts for b in find_blocks(model)] == [8, 4]
    model.save_pretrained(tmp_path / "out")
    assert [b.num_experts for b in find_blocks(AutoModelForCausalLM.from_pretrained(tmp_path / "out"))] == [8, 4]
    by_index = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], pruning_config=_config(ignore=[1]))
    assert [b.num_experts for b in find_blocks(by_index)] == [4, 8]


def test_bfloat16_model(checkpoints, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoints["qwen2_moe"], dtype=torch.bfloat16, pruning_config=_config()
    )
    assert model.dtype == torch.bfloat16 and [b.num_experts for b in find_blocks(model)] == [4, 4]
    prompt = tokenizer("experts", return_tensors="pt")
    assert model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0).shape[1] == 4 + len(
        prompt["input_ids"][0]
    )


def test_other_auto_classes(checkpoints):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoints["qwen3_moe"], num_labels=3, pruning_config=_config(method="frequency")
    )
    assert [b.num_experts for b in find_blocks(model)] == [4, 4]


def test_a_copy_of_a_pruned_model_saves_itself(checkpoints, tmp_path):
    import copy

    model = AutoModelForCausalLM.from_pretrained(checkpoints["olmoe"], pruning_config=_config(method="frequency"))
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.lm_head.weight.zero_()
    clone.save_pretrained(tmp_path / "clone")
    assert not _tensors(tmp_path / "clone")["lm_head.weight"].any()
    assert (tmp_path / "clone" / "moe_pruning_plan.json").exists()


def test_allocation_none_means_uniform():
    assert MoEPruneConfig(allocation=None, num_experts_to_keep=3).allocation == "uniform"


def test_saved_tokenizer_names_a_class_transformers_4_57_knows(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from hf_moe_prune.export.saving import save_tokenizer

    save_tokenizer(tokenizer, tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert AutoTokenizer.from_pretrained(tmp_path)("experts")["input_ids"] == tokenizer("experts")["input_ids"]
