"""Bad input: a clear error that names the problem and the fix, before any work, and nothing written."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.calibration import runner
from hf_moe_prune.testing import tiny_model

from .conftest import CALIBRATION


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if a forward pass starts: these errors must come before calibration."""

    def forbidden(*args, **kwargs):
        raise AssertionError("calibration ran before the error")

    monkeypatch.setattr(runner.ExpertObserver, "attach", forbidden)


def test_unknown_method_through_from_pretrained(checkpoints):
    with pytest.raises(
        ValueError,
        match="Unknown pruning method 'magic'. Supported: auto, compel, diep, ean, frequency, hope, man, output_error",
    ):
        AutoModelForCausalLM.from_pretrained(
            checkpoints["qwen3_moe"], pruning_config={"method": "magic", "ratio": 0.5}
        )


@pytest.mark.parametrize("ratio", [1.0, 1.5, 0.0, -0.5])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\)"):
        MoEPruneConfig(ratio=ratio)


def test_too_few_experts_for_top_k_fails_before_calibration(checkpoints, no_calibration):
    config = MoEPruneConfig(ratio=0.9, calibration=CALIBRATION, seq_len=32)
    message = (
        r"would keep 1 of 8 experts but routes every token to top-k=2 experts: keep at least 2 \(ratio at most 0.75\)"
    )
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(checkpoints["qwen2_moe"], pruning_config=config)
    with pytest.raises(ValueError, match=message):
        hf_moe_prune.prune(tiny_model("mixtral"), config)


@pytest.mark.parametrize(
    "calibration, message",
    [
        ([], "The calibration data is empty"),
        (["", "   "], "The calibration data is empty"),
        (["short text"], r"has only \d+ tokens, fewer than one row of seq_len=512"),
        (None, "This method needs calibration data"),
        (torch.zeros(0, 8, dtype=torch.long), "The calibration tensor is empty"),
    ],
)
def test_empty_or_short_calibration(checkpoints, calibration, message, no_calibration):
    config = MoEPruneConfig(method="reap", ratio=0.5, calibration=calibration, seq_len=512)
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(checkpoints["olmoe"], pruning_config=config)


def test_data_free_method_needs_no_calibration(checkpoints):
    model = AutoModelForCausalLM.from_pretrained(checkpoints["olmoe"], pruning_config=MoEPruneConfig("random", 0.5))
    assert model.moe_pruning_plan.calibration["source"] == "none" and "rows" not in model.moe_pruning_plan.calibration


def test_model_without_moe_layers():
    config = AutoConfig.for_model(
        "llama",
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    dense = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM \(model_type='llama'\) has no MoE layers"):
        hf_moe_prune.prune(dense, MoEPruneConfig(ratio=0.5, calibration=CALIBRATION))
    all_dense = tiny_model("qwen2_moe", mlp_only_layers=[0, 1])
    with pytest.raises(ValueError, match="has no MoE layers"):
        hf_moe_prune.prune(all_dense, MoEPruneConfig(ratio=0.5, calibration=CALIBRATION))


def test_unsupported_family_lists_the_supported_ones():
    from hf_moe_prune.testing import tiny_model

    model = tiny_model("qwen3_moe")
    model.config.model_type = "my_new_moe"  # a MoE family hf_moe_prune has never heard of
    with pytest.raises(ValueError) as error:
        hf_moe_prune.prune(model, MoEPruneConfig(method="random", ratio=0.5))
    text = str(error.value)
    assert "Model family 'my_new_moe'" in text and "looks like a MoE model but is not supported yet" in text
    assert ", ".join(hf_moe_prune.ADAPTERS.names()) in text and "deepseek_v3" in text
    assert "hf_moe_prune/adapters/<model_type>.py" in text


def test_both_pruning_and_quantization_config(checkpoints):
    config = MoEPruneConfig(method="random", ratio=0.5)
    with pytest.raises(ValueError, match="Pass the pruning config once"):
        AutoModelForCausalLM.from_pretrained(checkpoints["olmoe"], pruning_config=config, quantization_config=config)


def test_allocation_must_match_the_layers():
    with pytest.raises(ValueError, match="allocation lists 3 keep counts but the model has 2 MoE layers"):
        hf_moe_prune.prune(tiny_model("olmoe"), MoEPruneConfig("random", allocation=[4, 4, 4]))
    with pytest.raises(ValueError, match=r"allocation names layers \[5\]"):
        hf_moe_prune.prune(tiny_model("olmoe"), MoEPruneConfig("random", allocation={5: 4}))


def _pruned():
    model = tiny_model("qwen3_moe")
    hf_moe_prune.prune(model, MoEPruneConfig("random", 0.5), progress=False)
    return model


def test_non_empty_output_folder_is_never_overwritten(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    model = _pruned()
    with pytest.raises(FileExistsError, match="exists and is not empty; nothing was written"):
        model.save_pretrained(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    # overwrite replaces only a folder that holds a model: a stray file is the user's, so nothing is written
    with pytest.raises(FileExistsError, match=r"does not hold only a model \(keep.txt\)"):
        model.save_pretrained(target, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_failed_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = _pruned()
    model.save_pretrained(tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_moe_prune.PrunePlan, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "out", overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before  # old save intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_compensation_that_reruns_blocks_is_refused_for_decoder_layer_blocks():
    model = tiny_model("gemma4_text")
    rows = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="whole decoder layer: use compensation='none' or 'merge'"):
        hf_moe_prune.prune(model, MoEPruneConfig("compel", 0.5, calibration=rows), progress=False)
