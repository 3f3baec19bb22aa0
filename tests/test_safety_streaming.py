"""Streaming safety (issue 15, items 9 and 11): checkpoints streaming cannot re-prune are refused before any layer is
calibrated, with the reason and the fix; the oneDNN workaround that tripled the time is replaced by bounded product
shapes that leave every result bit-identical."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import hf_moe_prune
import hf_moe_prune.streaming as streaming
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.pipeline import prepare
from hf_moe_prune.streaming import StreamingRefused, stream_prune, streaming_refusal
from hf_moe_prune.streaming import layers as streaming_layers
from hf_moe_prune.streaming.kernels import RowBuckets, bucket
from hf_moe_prune.testing import fixture_path, save_tiny_model, tiny_model, tiny_tokenizer

ROWS = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))


def _config(method="reap", ratio=0.5, **kwargs):
    return MoEPruneConfig(method, ratio, calibration=ROWS, batch_size=2, **kwargs)


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if streaming reaches the layer-by-layer calibration (or runs any layer)."""

    def calibrated(*args, **kwargs):
        raise AssertionError("a layer was calibrated before the checkpoint was refused")

    monkeypatch.setattr(streaming, "calibrate", calibrated)
    monkeypatch.setattr(streaming_layers, "calibrate", calibrated)
    monkeypatch.setattr(streaming_layers, "_run_layer", calibrated)


def _save_pruned(folder, config) -> str:
    model = tiny_model("qwen3_moe")
    hf_moe_prune.prune(model, config, tokenizer=tiny_tokenizer(), progress=False)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return save_tiny_model("qwen3_moe", tmp_path_factory.mktemp("stock") / "qwen3_moe")


def _copy(stock: str, folder) -> str:
    shutil.copytree(stock, folder)
    return str(folder)


# Item 9: each of these failed deep in grouped_mm ("Expected inputs of BF16 type ...") after calibration started.


def test_non_uniform_checkpoint_is_refused_before_calibration(tmp_path, no_calibration):
    path = _save_pruned(tmp_path / "pruned", _config(ratio=0.6, allocation="global"))
    counts = AutoConfig.from_pretrained(path).quantization_config
    counts = counts["experts_per_layer"] if isinstance(counts, dict) else counts.experts_per_layer
    assert len(set(counts.values())) > 1  # really per-layer counts
    with pytest.raises(StreamingRefused, match=r"already pruned with per-layer expert counts.*hf_moe_prune\.prune\("):
        stream_prune(path, _config(), progress=False)
    with pytest.raises(ValueError, match="already pruned with per-layer expert counts"):
        AutoModelForCausalLM.from_pretrained(path, pruning_config=_config(streaming=True))


def test_neuron_pruned_checkpoint_is_refused_before_calibration(tmp_path, no_calibration):
    path = _save_pruned(tmp_path / "neurons", _config("tenp", 0.4))
    assert any(".groups." in key for key in load_file(f"{path}/model.safetensors"))
    with pytest.raises(StreamingRefused, match="already neuron-pruned.*Prune the original checkpoint"):
        stream_prune(path, _config(), progress=False)


def test_config_with_more_experts_than_the_weights_is_refused(stock, tmp_path, no_calibration):
    path = _copy(stock, tmp_path / "edited")
    config = json.loads(open(f"{path}/config.json").read())
    key = next(k for k in ("num_experts", "num_local_experts") if k in config)
    assert config[key] == 8
    config[key] = 16
    open(f"{path}/config.json", "w").write(json.dumps(config))
    pattern = r"does not fit the model its config\.json builds: model\.layers\.0\.mlp\.experts\..* needs shape \[16,"
    with pytest.raises(ValueError, match=pattern) as error:
        stream_prune(path, _config(), progress=False)
    assert "merge into [8," in str(error.value) and "use the config.json saved with these weights" in str(error.value)
    assert not isinstance(error.value, StreamingRefused)  # a broken checkpoint: no fallback to a full load


@pytest.mark.parametrize(
    ("dropped", "message"),
    [
        ("model.layers.1.self_attn.q_proj.weight", r"lacks tensors the model needs \(1: model\.layers\.1\.self_attn"),
        ("model.layers.1.mlp.experts.0.down_proj.weight", r"down_proj needs shape \[8, .* tensors are missing"),
    ],
)
def test_checkpoint_missing_a_tensor_is_refused(stock, tmp_path, no_calibration, dropped, message):
    path = _copy(stock, tmp_path / "incomplete")
    weights = load_file(f"{path}/model.safetensors")
    del weights[dropped]
    save_file(weights, f"{path}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=message):
        stream_prune(path, _config(), progress=False)


def test_stock_checkpoint_still_streams(stock):
    model = stream_prune(stock, _config(), progress=False)
    assert [b.num_kept for b in model.moe_pruning_plan.blocks] == [4, 4]


def test_streaming_refusal_contract(tmp_path):
    skeleton = tiny_model("qwen3_moe")
    job = prepare(skeleton, _config())
    assert streaming_refusal(job.config, job.method, job.blocks) is None
    compel = prepare(skeleton, _config("compel"))
    reason = streaming_refusal(compel.config, compel.method, compel.blocks)
    assert reason.startswith("Streaming (plan before load) cannot do this") and "needs gradients" in reason
    with pytest.raises(StreamingRefused) as error:
        streaming.check_streamable(compel.config, compel.method, "dense", compel.blocks)
    assert str(error.value) == reason
    pruned = AutoConfig.from_pretrained(_save_pruned(tmp_path / "pruned", _config(ratio=0.6, allocation="global")))
    assert "per-layer expert counts" in streaming_refusal(job.config, job.method, job.blocks, model_config=pruned)
    assert streaming_refusal(job.config, job.method, job.blocks, propagation="sideways").count("propagation") == 1


# Item 11: oneDNN stays on; products are padded to a few row counts, which changes no bit.


def test_row_buckets_are_few_and_bounded():
    sizes = [bucket(n) for n in range(1, 8193)]
    assert all(n <= b <= n * 1.25 for n, b in zip(range(1, 8193), sizes))
    assert len(set(sizes)) <= 48  # all row counts up to 8192 share 48 kernel shapes


def _products(x, weight, bias, experts, rows, offs):
    with torch.no_grad():
        grouped = F.grouped_mm(x[: 3 * rows], experts, offs=offs)[: offs[-1]] if x.dtype == torch.bfloat16 else None
        return F.linear(x[:rows], weight), F.linear(x[:rows], weight, bias), x[:rows] @ weight.T, grouped


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_padded_products_are_bit_identical(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(900, 64, generator=generator).to(dtype)
    weight, bias = torch.randn(48, 64, generator=generator).to(dtype), torch.randn(48, generator=generator).to(dtype)
    experts = torch.randn(4, 64, 40, generator=generator).to(dtype)  # CPU grouped_mm runs bf16 only
    for rows in [*range(1, 70), 129, 250, 299]:
        offs = torch.tensor(sorted(torch.randint(0, 3 * rows, (4,), generator=generator).tolist()), dtype=torch.int32)
        reference = _products(x, weight, bias, experts, rows, offs)
        with RowBuckets():
            padded = _products(x, weight, bias, experts, rows, offs)
        for a, b in zip(reference, padded):
            assert (a is None and b is None) or torch.equal(a, b), rows


def test_streaming_keeps_onednn_and_equals_a_full_load_in_bf16(tmp_path, monkeypatch):
    path = tmp_path / "bf16"
    tiny_model("qwen3_moe", router_scale=4.0).to(torch.bfloat16).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    seen = []
    run_layer = streaming_layers._run_layer

    def recording(*args, **kwargs):
        seen.append(torch.backends.mkldnn.enabled)
        return run_layer(*args, **kwargs)

    monkeypatch.setattr(streaming_layers, "_run_layer", recording)
    config = MoEPruneConfig("reap", 0.5, calibration=torch.randint(1, 300, (8, 48)), batch_size=3)
    streamed = stream_prune(str(path), config, progress=False)
    assert seen and all(seen)  # oneDNN was on in every layer pass (it made streaming 3x slower when off)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert loaded.dtype == torch.bfloat16
    plan = hf_moe_prune.prune(loaded, config, progress=False)
    assert [b.kept for b in streamed.moe_pruning_plan.blocks] == [b.kept for b in plan.blocks]
    assert [b.scores for b in streamed.moe_pruning_plan.blocks] == [b.scores for b in plan.blocks]


def test_fixture_streams_to_the_full_load_plan():
    config = MoEPruneConfig("reap", 0.5, calibration=ROWS, batch_size=2)
    streamed = stream_prune(fixture_path("qwen3_moe"), config, progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
    plan = hf_moe_prune.prune(loaded, config, progress=False)
    assert [b.kept for b in streamed.moe_pruning_plan.blocks] == [b.kept for b in plan.blocks]
