"""Streaming (plan before load): the same plan and model as pruning after a full load, less memory, clear refusals."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.streaming import stream_prune
from hf_moe_prune.testing import fixture_path, mixed_texts, save_tiny_model

IDS = torch.randint(5, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
SMALL = {"num_samples": 12, "seq_len": 96, "batch_size": 4}


def _logits(model, ids=IDS):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state  # a few families have no LM head


def _after_load(path, config):
    model = AutoModelForCausalLM.from_pretrained(path)
    plan = hf_moe_prune.prune(model, config, progress=False)
    return model, plan


@pytest.mark.parametrize("fixture", ["qwen3_moe", "qwen2_moe"])
@pytest.mark.parametrize("method", ["frequency", "soft_count", "ean", "reap", "random", "tenp"])
def test_streaming_plan_and_model_equal_pruning_after_load(fixture, method):
    config = MoEPruneConfig(method, 0.5 if method != "tenp" else 0.4, calibration=mixed_texts(), **SMALL)
    streamed = stream_prune(fixture_path(fixture), config, progress=False)
    reference, plan = _after_load(fixture_path(fixture), config)
    streamed_plan = streamed.moe_pruning_plan
    assert [b.kept for b in streamed_plan.blocks] == [b.kept for b in plan.blocks]
    assert [b.neurons for b in streamed_plan.blocks] == [b.neurons for b in plan.blocks]
    torch.testing.assert_close(
        torch.tensor([b.scores for b in streamed_plan.blocks]), torch.tensor([b.scores for b in plan.blocks])
    )
    assert streamed_plan.parameters == plan.parameters
    torch.testing.assert_close(_logits(streamed), _logits(reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family", ["mixtral", "deepseek_v3", "olmoe", "gpt_oss", "qwen3_moe", "inkling_text", "longcat_flash"]
)
def test_streaming_on_tiny_checkpoints_of_other_families(family, tmp_path):
    path = save_tiny_model(family, tmp_path / family)
    rows = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    config = MoEPruneConfig("reap", 0.5, calibration=rows, batch_size=2)
    streamed = stream_prune(str(path), config, progress=False)
    reference, plan = _after_load(path, config)
    assert [b.kept for b in streamed.moe_pruning_plan.blocks] == [b.kept for b in plan.blocks]
    ids = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(streamed, ids), _logits(reference, ids), rtol=1e-5, atol=1e-5)


def test_from_pretrained_streams_saves_and_reloads(tmp_path):
    config = MoEPruneConfig("reap", 0.5, calibration=mixed_texts(), streaming=True, **SMALL)
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=config)
    streaming = model.moe_pruning_plan.calibration["streaming"]
    assert streaming["propagation"] == "dense" and streaming["peak_rss_gb"] > 0
    assert [b.num_experts for b in find_blocks(model)] == [8] * 4
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=0)
    assert model.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False).shape[1] == 7


def test_pruned_prefix_propagation_decides_layer_by_layer():
    config = MoEPruneConfig("reap", 0.5, calibration=mixed_texts(), **SMALL)
    dense = stream_prune(fixture_path("qwen3_moe"), config, progress=False).moe_pruning_plan
    pruned = stream_prune(fixture_path("qwen3_moe"), config, propagation="pruned", progress=False).moe_pruning_plan
    assert dense.blocks[0].kept == pruned.blocks[0].kept  # the first layer sees the same inputs either way
    assert all(b.num_kept == 8 for b in pruned.blocks)
    assert pruned.calibration["streaming"]["propagation"] == "pruned"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "compel"}, "needs gradients"),
        ({"method": "reap", "allocation": "evolutionary"}, "re-runs the model"),
        ({"method": "reap", "compensation": "fisher"}, "needs the whole block in memory"),
        ({"method": "reap", "compensation": "merge"}, "needs the whole block in memory"),
    ],
)
def test_streaming_refuses_what_needs_the_whole_model(kwargs, message):
    config = MoEPruneConfig(ratio=0.5, calibration=mixed_texts(), **SMALL, **kwargs)
    with pytest.raises(ValueError, match=message):
        stream_prune(fixture_path("qwen3_moe"), config, progress=False)


def test_streaming_refuses_layers_that_carry_state(tmp_path):
    path = save_tiny_model("zaya", tmp_path / "zaya")  # each ZaYA router reads the previous layer's router states
    rows = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pass state besides hidden states"):
        stream_prune(str(path), MoEPruneConfig("reap", 0.5, calibration=rows), progress=False)


@pytest.mark.parametrize(
    ("family", "message"),
    [("jetmoe", "split over several modules"), ("switch_transformers", "is an encoder-decoder model")],
)
def test_streaming_refuses_layouts_it_cannot_stream(tmp_path, family, message):
    path = save_tiny_model(family, tmp_path / family)
    rows = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=message):
        stream_prune(str(path), MoEPruneConfig("reap", 0.5, calibration=rows), progress=False)


def test_streaming_needs_safetensors(tmp_path):
    (tmp_path / "config.json").write_text((Path(fixture_path("qwen3_moe")) / "config.json").read_text())
    with pytest.raises(ValueError, match="no .safetensors files"):
        stream_prune(str(tmp_path), MoEPruneConfig("frequency", 0.5, calibration=IDS), progress=False)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from transformers import AutoModelForCausalLM
    path, mode = sys.argv[1], sys.argv[2]
    rows = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    config = MoEPruneConfig("reap", 0.75, calibration=rows, batch_size=4, streaming=mode == "streaming")
    def high_water():  # VmHWM (KiB), reset by exec; ru_maxrss would carry pytest's own peak over the fork
        return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
    base = high_water()
    if mode == "streaming":
        model = AutoModelForCausalLM.from_pretrained(path, pruning_config=config)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
        hf_moe_prune.prune(model, config, progress=False)
    peak = high_water()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_bytes": (peak - base) * 1024, "pruned_bytes": size}))
    """
)


def test_streaming_peak_memory_stays_below_the_full_model(tmp_path):
    """A ~460 MB checkpoint (8 layers of 32 experts): streaming it to 25% of the experts peaks well below the full
    model's size (one layer at a time, then the compact model), and below pruning after a full load."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "qwen3_moe",
        vocab_size=512,
        hidden_size=384,
        intermediate_size=256,
        moe_intermediate_size=384,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=32,
        num_experts_per_tok=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(tmp_path / "big")
    del model
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    results = {}
    for mode in ("streaming", "after_load"):
        out = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "big"), mode], capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    streamed, after_load = results["streaming"], results["after_load"]
    assert streamed["pruned_bytes"] == after_load["pruned_bytes"] < 0.3 * full_bytes
    assert streamed["peak_bytes"] < 0.75 * full_bytes, (streamed, full_bytes)
    assert streamed["peak_bytes"] < after_load["peak_bytes"], (streamed, after_load)


def test_pruning_a_model_offloaded_by_device_map(tmp_path):
    """Layers offloaded to disk by accelerate calibrate through its hooks and are sliced in its offload store."""
    path = fixture_path("qwen3_moe")
    device_map = _offload_map()
    config = MoEPruneConfig("reap", 0.5, calibration=mixed_texts(), **SMALL)
    offloaded = AutoModelForCausalLM.from_pretrained(
        path, device_map=device_map, offload_folder=str(tmp_path / "offload"), pruning_config=config
    )
    assert find_blocks(offloaded)[3].experts.gate_up_proj.device.type == "meta"  # still offloaded, now sliced
    reference, plan = _after_load(path, config)
    assert [b.kept for b in offloaded.moe_pruning_plan.blocks] == [b.kept for b in plan.blocks]
    torch.testing.assert_close(_logits(offloaded), _logits(reference), rtol=1e-5, atol=1e-5)
    offloaded.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(_logits(reloaded), _logits(reference), rtol=1e-5, atol=1e-5)


def _offload_map():
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    return device_map | {f"model.layers.{i}": "cpu" if i < 2 else "disk" for i in range(4)}


def test_diep_learns_its_masks_through_offloaded_layers(tmp_path):
    config = MoEPruneConfig("diep", 0.5, calibration=mixed_texts(), num_samples=8, seq_len=64)
    offloaded = AutoModelForCausalLM.from_pretrained(
        fixture_path("qwen3_moe"), device_map=_offload_map(), offload_folder=str(tmp_path), pruning_config=config
    )
    _, plan = _after_load(fixture_path("qwen3_moe"), config)
    assert [b.kept for b in offloaded.moe_pruning_plan.blocks] == [b.kept for b in plan.blocks]


def test_compel_refuses_offloaded_expert_weights(tmp_path):
    config = MoEPruneConfig("compel", 0.5, calibration=mixed_texts(), num_samples=8, seq_len=64)
    with pytest.raises(ValueError, match="compel needs gradients on the expert weights"):
        AutoModelForCausalLM.from_pretrained(
            fixture_path("qwen3_moe"), device_map=_offload_map(), offload_folder=str(tmp_path), pruning_config=config
        )


# Families streaming refuses (with a message naming the reason), and the words of that reason.
NOT_STREAMABLE = {
    "dbrx": "stored flattened",
    "ernie4_5_vl_moe_text": "several expert groups",
    "glm5_next_text": "pass state",
    "glm_moe_dsa": "pass state",
    "hy_v4": "pass state",
    "hy_v4_vl_text": "pass state",
    "jetmoe": "split over several modules",
    "mistral_large4_text": "pass state",
    "switch_transformers": "encoder-decoder",
    "zaya": "pass state",
}


@pytest.mark.parametrize("family", hf_moe_prune.ADAPTERS.names())
def test_streaming_equals_pruning_after_a_full_load_for_every_family(family, tmp_path):
    """Every family either streams to exactly the model that pruning after a full load gives (same experts, same
    logits), or is refused before any weight is read, with the reason."""
    path = save_tiny_model(family, tmp_path / family, router_scale=4.0)
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    config = MoEPruneConfig("reap", 0.5, calibration=rows)
    if family in NOT_STREAMABLE:
        with pytest.raises(ValueError, match=f"Streaming.*{NOT_STREAMABLE[family]}"):
            stream_prune(str(path), config, progress=False)
        return
    streamed = stream_prune(str(path), config, progress=False)
    loaded = type(streamed).from_pretrained(path).eval()
    plan = hf_moe_prune.prune(loaded, config, progress=False)
    assert [b.kept for b in streamed.moe_pruning_plan.blocks] == [b.kept for b in plan.blocks]
    ids = torch.randint(1, 300, (1, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(streamed, ids), _logits(loaded, ids), rtol=1e-5, atol=1e-5)
