"""GGUF export of uniformly pruned checkpoints: read back with the `gguf` package, the pruned expert count, every
tensor under llama.cpp's name with the shape llama.cpp expects, the tokenizer; non-uniform checkpoints refused."""

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.cli import main
from hf_moe_prune.export.gguf import export_gguf
from hf_moe_prune.testing import fixture_path, mixed_texts

SMALL = {"num_samples": 12, "seq_len": 64, "batch_size": 4}


def _pruned(fixture: str, folder, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(fixture_path(fixture))
    plan = hf_moe_prune.prune(model, MoEPruneConfig(calibration=mixed_texts(), **SMALL, **kwargs), progress=False)
    model.save_pretrained(folder, tokenizer=AutoTokenizer.from_pretrained(fixture_path(fixture)))
    return plan


@pytest.mark.parametrize("fixture, arch", [("qwen3_moe", "qwen3moe"), ("qwen2_moe", "qwen2moe"), ("olmoe", "olmoe")])
def test_uniform_checkpoints_export_with_the_pruned_expert_count(fixture, arch, tmp_path):
    plan = _pruned(fixture, tmp_path / "pruned", method="reap", ratio=0.5)
    kept = plan.blocks[0].num_kept
    report = export_gguf(tmp_path / "pruned", tmp_path / "model.gguf")
    assert report["architecture"] == arch and report["expert_count"] == kept
    reader = gguf.GGUFReader(str(tmp_path / "model.gguf"))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer")}
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.expert_count"] == kept == config["num_experts"]
    assert fields[f"{arch}.expert_used_count"] == config["num_experts_per_tok"]
    assert fields[f"{arch}.block_count"] == config["num_hidden_layers"]
    tensors = {t.name: t.shape.tolist() for t in reader.tensors}
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    width = config.get("moe_intermediate_size") or config["intermediate_size"]
    for layer in range(layers):  # ggml order: [hidden, width, experts] for gate/up, [width, hidden, experts] down
        assert tensors[f"blk.{layer}.ffn_gate_exps.weight"] == [hidden, width, kept]
        assert tensors[f"blk.{layer}.ffn_up_exps.weight"] == [hidden, width, kept]
        assert tensors[f"blk.{layer}.ffn_down_exps.weight"] == [width, hidden, kept]
        assert tensors[f"blk.{layer}.ffn_gate_inp.weight"] == [hidden, kept]
    assert tensors["token_embd.weight"] == [hidden, config["vocab_size"]]
    if fixture == "qwen2_moe":
        assert "blk.0.ffn_gate_shexp.weight" in tensors and f"{arch}.expert_shared_feed_forward_length" in fields
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == config["vocab_size"]
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 0
    # the f16 experts are the saved weights, rounded
    saved = load_file(str(next((tmp_path / "pruned").glob("*.safetensors"))))
    down = next(t for t in reader.tensors if t.name == "blk.1.ffn_down_exps.weight")
    expert = saved["model.layers.1.mlp.experts.1.down_proj.weight"]
    np.testing.assert_allclose(np.asarray(down.data)[1], expert.half().float().numpy(), rtol=0, atol=0)
    assert torch.is_tensor(expert)


def test_non_uniform_and_unsupported_checkpoints_are_refused(tmp_path):
    _pruned("qwen3_moe", tmp_path / "global", method="reap", ratio=0.5, allocation="global")
    with pytest.raises(ValueError, match="not a uniform checkpoint"):
        export_gguf(tmp_path / "global", tmp_path / "x.gguf")
    _pruned("deepseek_v3", tmp_path / "ds", method="reap", ratio=0.5)
    with pytest.raises(ValueError, match="convert_hf_to_gguf.py"):
        export_gguf(tmp_path / "ds", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_gguf(tmp_path, capsys):
    _pruned("qwen3_moe", tmp_path / "pruned", method="frequency", ratio=0.25)
    out = tmp_path / "model.gguf"
    assert main(["export-gguf", str(tmp_path / "pruned"), "--output", str(out)]) == 0
    assert "12 experts (2 per token)" in capsys.readouterr().out
    assert main(["export-gguf", str(tmp_path / "pruned"), "--output", str(out)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
