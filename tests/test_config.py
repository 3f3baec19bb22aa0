import copy
import json

import pytest
import torch

import hf_moe_prune
from hf_moe_prune import METHODS, MoEPruneConfig


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_round_trips_through_json(method):
    config = MoEPruneConfig(method=method, ratio=0.25, seq_len=64, ignore=[0, "model.layers.3.*"], method_kwargs={})
    data = json.loads(config.to_json_string(use_diff=False))
    assert data["quant_method"] == "moe_prune"
    assert MoEPruneConfig.from_dict(data) == config


def test_runtime_fields_are_not_serialized_and_survive_deepcopy():
    def texts():
        yield from ["a text"] * 3

    generator = texts()
    config = MoEPruneConfig(ratio=0.5, calibration=generator, tokenizer=object())
    assert "calibration" not in config.to_dict() and "tokenizer" not in config.to_dict()
    copied = copy.deepcopy({"cfg": config})["cfg"]
    assert copied.calibration is generator  # shared, neither copied nor exhausted
    assert list(copied.calibration) == ["a text"] * 3
    assert copied.ratio == 0.5 and copied is not config


def test_per_layer_allocation_round_trips():
    config = MoEPruneConfig(allocation={0: 6, 1: 4})
    again = MoEPruneConfig.from_dict(json.loads(config.to_json_string()))
    assert {int(k): v for k, v in again.allocation.items()} == {0: 6, 1: 4}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "magic", "ratio": 0.5}, "Unknown pruning method 'magic'. Supported: auto, compel, diep, ean"),
        ({"ratio": 1.5}, "ratio must be a number in (0, 1)"),
        ({"ratio": 0}, "ratio must be a number in (0, 1)"),
        ({"ratio": -0.1}, "ratio must be a number in (0, 1)"),
        ({"ratio": True}, "ratio must be a number in (0, 1)"),
        ({}, "Say how much to prune"),
        ({"ratio": 0.5, "num_experts_to_keep": 4}, "Give only one of"),
        ({"num_experts_to_keep": 0}, "num_experts_to_keep must be a positive integer"),
        ({"allocation": "magic"}, "allocation='magic' is not supported"),
        ({"allocation": [4, 0]}, "allocation counts must be positive integers"),
        ({"ratio": 0.5, "seq_len": 0}, "seq_len must be a positive integer"),
        ({"ratio": 0.5, "compensation": "magic"}, "Unknown compensation 'magic'"),
    ],
)
def test_bad_config_names_the_fix(kwargs, message):
    with pytest.raises(ValueError) as error:
        MoEPruneConfig(**kwargs)
    assert message in str(error.value)


def test_registration_is_idempotent():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    hf_moe_prune.register()
    hf_moe_prune.register()
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["moe_prune"] is MoEPruneConfig
    assert AUTO_QUANTIZER_MAPPING["moe_prune"] is hf_moe_prune.MoEPruneHfQuantizer


def test_config_accepts_token_id_tensor():
    ids = torch.arange(64).view(2, 32)
    config = MoEPruneConfig(ratio=0.5, calibration=ids)
    assert copy.deepcopy(config).calibration is ids
