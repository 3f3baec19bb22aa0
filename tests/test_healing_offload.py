"""Healing a model accelerate offloads (`device_map` with CPU and disk): the trained weights live in the offload
store while healing, and the result equals healing the same model loaded on one device."""

import importlib

import pytest
import torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from transformers import AutoModelForCausalLM

from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.healing import offload
from hf_moe_prune.healing.offload import check_store, will_offload
from hf_moe_prune.testing import fixture_path

from .conftest import HELD_OUT, pruned_copy


def _offload_map():
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    return device_map | {f"model.layers.{i}": "cpu" if i < 2 else "disk" for i in range(4)}


@pytest.mark.parametrize("through_parametrization", [False, True], ids=["cpu", "copied-to-execution-device"])
def test_an_offloaded_model_heals_like_one_on_one_device(
    held_out_fixture, tmp_path, monkeypatch, through_parametrization
):
    """Teacher targets recorded through the offloading hooks, the trained weights updated in the offload store: the
    same training curve, held-out KL and logits as the model loaded on one device, and a checkpoint that reloads.
    `copied-to-execution-device` runs the path a GPU with CPU offload takes (the trained CPU tensor reaches the
    forward through a differentiable copy), with the CPU as the execution device."""
    if through_parametrization:
        monkeypatch.setattr(offload, "_needs_copy", lambda device: True)
    model, rows = held_out_fixture
    healing = {"steps": 6, "eval_every": 3}
    config = MoEPruneConfig("reap", 0.5, calibration=rows, healing=healing, **HELD_OUT)
    offloaded = AutoModelForCausalLM.from_pretrained(
        fixture_path("qwen3_moe"),
        device_map=_offload_map(),
        offload_folder=str(tmp_path / "offload"),
        pruning_config=config,
    )
    record = offloaded.moe_pruning_plan.healing
    assert record["steps"] == 6 and record["offloaded_tensors"] > 0
    experts = find_blocks(offloaded)[3].experts
    assert experts.gate_up_proj.device.type == "meta"  # offloaded again after healing
    assert not any(p.requires_grad is False for p in offloaded.parameters())  # flags as loaded
    assert not hasattr(experts, "parametrizations")
    full, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing=healing)
    assert record["train_kl_first"] == pytest.approx(plan.healing["train_kl_first"], rel=1e-5)  # same teacher
    assert record["held_out_kl_after"] == pytest.approx(plan.healing["held_out_kl_after"], rel=1e-4)
    assert record["held_out_kl_after"] < record["held_out_kl_before"]
    ids = rows[:2]
    with torch.no_grad():
        logits = offloaded(ids).logits
        torch.testing.assert_close(logits, full(ids).logits, rtol=1e-4, atol=1e-4)
    offloaded.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, logits, rtol=0, atol=0)


def test_lora_healing_of_an_offloaded_model_is_refused_before_calibration(held_out_fixture, tmp_path, monkeypatch):
    _, rows = held_out_fixture
    config = MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 2, "lora": True}, **HELD_OUT)
    run_module = importlib.import_module("hf_moe_prune.pipeline.run")  # the package exports a function `run`
    monkeypatch.setattr(run_module, "collect_stats", lambda *a, **k: pytest.fail("calibrated"))
    with pytest.raises(ValueError, match="drop `lora`"):
        AutoModelForCausalLM.from_pretrained(
            fixture_path("qwen3_moe"), device_map=_offload_map(), offload_folder=str(tmp_path), pruning_config=config
        )


def test_a_store_healing_cannot_update_is_refused():
    class ReadOnly(dict):  # a mapping without an in-memory state dict to write into
        pass

    class Store:
        def __getitem__(self, key):
            return torch.zeros(2, 2)

    module = torch.nn.Linear(2, 2, device="meta")
    add_hook_to_module(module, AlignDevicesHook(execution_device="cpu", offload=True, weights_map=Store()))
    with pytest.raises(ValueError, match="cannot update"):
        check_store(module, [module])
    writable = torch.nn.Linear(2, 2, device="meta")
    add_hook_to_module(writable, AlignDevicesHook(execution_device="cpu", offload=True, weights_map=ReadOnly()))
    check_store(writable, [writable])  # a dict is written into


def test_which_device_maps_offload():
    """Read from `from_pretrained`'s device map before accelerate's hooks exist (the quantizer's checks)."""
    assert will_offload(_offload_map())  # disk
    assert will_offload({"model": 0, "lm_head": "cpu"})  # CPU offload beside a GPU
    assert not will_offload({"model": "cpu", "lm_head": "cpu"}) and not will_offload({"": 0})
    assert not will_offload("auto") and not will_offload(None)  # resolved later: heal checks the hooks
