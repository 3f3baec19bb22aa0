"""ONNX Runtime (optimum-onnx 0.1.0, transformers 4.57.6, optimum 2.1): uniform checkpoints pruned by the main
environment (transformers 5) export, generate, and match PyTorch.

Tolerance: max |logit difference| ~1e-5 on the qwen3_moe fixture, both against the transformers 5 model that pruned
it and against transformers 4.57 loading the same folder; asserted below 1e-4.
"""

import pytest
import torch
import transformers

pytest.importorskip("optimum.onnxruntime", reason="needs the ONNX Runtime environment (tests_optimum/run.sh)")

from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from hf_moe_prune.integration.optimum import load_model, pipeline, supported_families  # noqa: E402

from .checkpoints import GENERATE  # noqa: E402
from .conftest import load_reference  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """The qwen3_moe checkpoint's pipeline, its export saved in a folder."""
    folder = tmp_path_factory.mktemp("onnx")
    return pipeline("text-generation", checkpoints["qwen3_moe"], accelerator="ort", save_dir=folder), folder


def test_ort_pipeline_matches_pytorch(checkpoints, exported):
    path, rows = checkpoints["qwen3_moe"], load_reference(checkpoints["qwen3_moe"])
    pipe, folder = exported
    assert type(pipe.model).__name__ == "ORTModelForCausalLM"
    here = AutoModelForCausalLM.from_pretrained(path).eval()  # transformers 4.57 reads the uniform checkpoint
    reloaded = load_model(folder, "ort")  # the saved export loads without exporting again
    for row in rows:
        ids = row["input_ids"][None]
        mask = torch.ones_like(ids)
        with torch.no_grad():
            assert (here(input_ids=ids).logits[0] - row["logits"]).abs().max() < ATOL
        for model in (pipe.model, reloaded):
            assert (model(input_ids=ids, attention_mask=mask).logits[0] - row["logits"]).abs().max() < ATOL
        assert torch.equal(pipe.model.generate(input_ids=ids, attention_mask=mask, **GENERATE)[0], row["greedy"])
        out = pipe(row["prompt"], return_full_text=False, **GENERATE)[0]["generated_text"]
        assert out == pipe.tokenizer.decode(row["greedy"][len(row["input_ids"]) :], skip_special_tokens=True)


def test_ort_token_type_ids_are_dropped(checkpoints, exported):
    """A bare `PreTrainedTokenizerFast` returns `token_type_ids`, which generate rejects in 4.57: we drop them."""
    path = checkpoints["qwen3_moe"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), eos_token="<|endoftext|>")
    assert "token_type_ids" in tokenizer("def")
    with pytest.raises(ValueError, match="token_type_ids"):
        AutoModelForCausalLM.from_pretrained(path).generate(**tokenizer("def", return_tensors="pt"), max_new_tokens=2)
    pipe = pipeline("text-generation", exported[1], accelerator="ort", tokenizer=tokenizer)
    assert "token_type_ids" not in pipe.tokenizer("def")
    assert pipe("def", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith("def")


def test_ort_refuses_non_uniform_and_unsupported_families(checkpoints):
    with pytest.raises(ValueError, match="non-uniformly.*transformers 5 and hf_moe_prune.*accelerator='openvino'"):
        pipeline("text-generation", checkpoints["qwen3_moe_nonuniform"], accelerator="ort")
    with pytest.raises(ValueError, match="cannot export 'mixtral'.*deepseek_v3, gpt_oss, qwen3_moe"):
        load_model(checkpoints["mixtral"], "ort")
    assert supported_families("ort") == ["deepseek_v3", "gpt_oss", "qwen3_moe"]


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_uniform_checkpoints_of_the_exported_families_load_in_transformers_4_57(checkpoints, name):
    """The ONNX Runtime path runs on transformers 4.57, whose experts are per-expert `nn.ModuleList`s: the fused
    checkpoint a uniform pruning writes under transformers 5 must load there as the same model."""
    assert transformers.__version__.startswith("4.57")
    model = AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    worst = 0.0
    for row in load_reference(checkpoints[name]):
        with torch.no_grad():
            logits = model(input_ids=row["input_ids"][None]).logits[0]
        worst = max(worst, float((logits - row["logits"]).abs().max()))
    assert worst < ATOL, f"{name}: max |logit difference| {worst} against transformers 5"
