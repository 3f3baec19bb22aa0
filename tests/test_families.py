"""The shared test every supported MoE family passes: blocks found, REAP and frequency at 50%, slicing ≡ masking in
the router, save → reload identical, generate."""

import copy
import math

import pytest
import torch

import hf_moe_prune
from hf_moe_prune import ADAPTERS, MoEPruneConfig, find_blocks
from hf_moe_prune.calibration.runner import model_inputs
from hf_moe_prune.reshape import mask_experts
from hf_moe_prune.testing import tiny_model
from hf_moe_prune.testing.tiny_configs import tiny_top_k

ROWS = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(1))


def _logits(model, ids=IDS):
    with torch.no_grad():
        out = model(**model_inputs(model, ids))  # encoder-decoder models: the decoder reads the ids too
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", ADAPTERS.names())
def test_family(family, tmp_path):
    model = tiny_model(family, router_scale=4.0)  # sigmoid routers saturate (tied scores) at larger scales
    blocks = find_blocks(model)
    assert blocks and all(b.num_experts == 8 and b.top_k == tiny_top_k(family) for b in blocks)
    shared = {(b.name, n): p.clone() for b in blocks for s in b.adapter.shared for n, p in _params(b, s)}
    # Blocks with fixed routing (DeepSeek-V4's hash layers) keep all their experts; every other block keeps half.
    expected = [8 if b.fixed_routing else 4 for b in blocks]
    assert 4 in expected
    for method in ("reap", "frequency"):
        pruned = copy.deepcopy(model)
        plan = hf_moe_prune.prune(pruned, MoEPruneConfig(method, 0.5, calibration=ROWS), progress=False)
        assert [b.num_kept for b in plan.blocks] == expected
        n_group = blocks[0].groups[0]
        if n_group > 1:  # group-limited routing keeps the same number of experts in every group
            for b in plan.blocks:
                size = b.num_experts // n_group
                assert {sum(1 for k in b.kept if k // size == g) for g in range(n_group)} == {4 // n_group}
        with mask_experts(find_blocks(model), {b.name: b.kept for b in plan.blocks}):
            masked = _logits(model)
        torch.testing.assert_close(_logits(pruned), masked, rtol=1e-4, atol=1e-4)
    for b in find_blocks(pruned):
        for s in b.adapter.shared:
            for n, p in _params(b, s):
                torch.testing.assert_close(p, shared[b.name, n], rtol=0, atol=0)
    pruned.save_pretrained(tmp_path / "out")
    reloaded = type(pruned).from_pretrained(tmp_path / "out")
    assert [b.num_experts for b in find_blocks(reloaded)] == expected
    saved, loaded = pruned.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # Bit-identical weights; the logits may differ in the last bits only: a tensor read from safetensors has another
    # memory alignment, which changes the BLAS kernel of small matmuls (seen with Switch Transformers' per-expert
    # linears: 2e-7 for one row, 0 after `.clone()` of the same weight).
    torch.testing.assert_close(_logits(reloaded), _logits(pruned), rtol=0, atol=1e-5)
    if hasattr(pruned, "generate") and hasattr(_call(pruned), "logits"):
        out = pruned.generate(IDS[:1, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
        # decoder-only: the prompt and 3 new tokens; encoder-decoder: the decoder start token and 3 new tokens
        assert out.shape[1] == (4 if pruned.config.is_encoder_decoder else 7)


def _call(model):
    with torch.no_grad():
        return model(**model_inputs(model, IDS[:1, :4]))


def _params(block, attribute):
    return [(f"{attribute}.{n}", p) for n, p in getattr(block.module, attribute).named_parameters()]


def test_multimodal_model_prunes_only_the_text_decoder(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from hf_moe_prune.testing.tiny_configs import tiny_kwargs

    text = tiny_kwargs("qwen3_vl_moe_text")
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 32,
        "num_heads": 2,
        "out_hidden_size": 32,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [],
    }
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(
        AutoConfig.for_model("qwen3_vl_moe", text_config=text, vision_config=vision)
    ).eval()
    vision_before = {n: p.clone() for n, p in model.named_parameters() if "visual" in n}
    assert vision_before and len(find_blocks(model)) == 2
    hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.5, calibration=ROWS), progress=False)
    assert [b.num_experts for b in find_blocks(model)] == [4, 4]
    for name, param in model.named_parameters():
        if name in vision_before:
            torch.testing.assert_close(param, vision_before[name], rtol=0, atol=0)
    assert model.config.text_config.num_experts == 4
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=0)


def test_group_rules_for_grouped_routers():
    model = tiny_model("deepseek_v3")  # 8 experts in n_group=2 groups, topk_group=1, top-2
    assert find_blocks(model)[0].groups == (2, 1)
    with pytest.raises(ValueError, match="must keep a multiple of 2 experts"):
        hf_moe_prune.prune(model, MoEPruneConfig("random", num_experts_to_keep=5))
    with pytest.raises(ValueError, match="needs at least 2 per group"):
        hf_moe_prune.prune(model, MoEPruneConfig("random", num_experts_to_keep=2))
    plan = hf_moe_prune.prune(model, MoEPruneConfig("random", ratio=0.3), progress=False)  # keeps 6 = 3 per group
    assert all(len(b.kept) == 6 and sum(k < 4 for k in b.kept) == 3 for b in plan.blocks)


def test_hash_routed_layers_keep_all_their_experts():
    model = tiny_model("deepseek_v4", router_scale=4.0)  # layer 0 routes by a fixed token -> experts table
    assert [b.fixed_routing for b in find_blocks(model)] == [True, False, False]
    table = find_blocks(model)[0].router.tid2eid.clone()
    for allocation in ({0: 4}, [4, 4, 4]):
        with pytest.raises(ValueError, match="fixed token-to-expert table"):
            hf_moe_prune.prune(copy.deepcopy(model), MoEPruneConfig("random", allocation=allocation))
    config = MoEPruneConfig("reap", 0.5, allocation="global", calibration=ROWS)
    plan = hf_moe_prune.prune(copy.deepcopy(model), config, progress=False)
    assert plan.blocks[0].num_kept == 8 and sum(b.num_kept for b in plan.blocks[1:]) == 8
    config = MoEPruneConfig("tenp", 0.4, calibration=ROWS, method_kwargs={"multiple_of": 4, "drop_experts": 0.25})
    pruned = copy.deepcopy(model)
    plan = hf_moe_prune.prune(pruned, config, progress=False)
    assert [b.num_kept for b in plan.blocks] == [8, 6, 6] and plan.blocks[0].neurons  # narrowed, none dropped
    torch.testing.assert_close(find_blocks(pruned)[0].router.tid2eid, table, rtol=0, atol=0)


def test_jetmoe_prunes_mlp_experts_and_leaves_attention_experts(tmp_path):
    """JetMoE's `num_local_experts` also sizes its mixture-of-attention experts: the config keeps it, the pruned
    checkpoint carries per-layer counts in `quantization_config`, and reloading shrinks only the MLP experts."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("jetmoe", router_scale=4.0)
    plan = hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.5, calibration=ROWS), progress=False)
    assert not plan.is_uniform  # no stock config can say "4 MLP experts, 8 attention experts"
    assert model.config.num_local_experts == 8 and model.config.quantization_config.experts_per_layer == {
        "model.layers.0.mlp": 4,
        "model.layers.1.mlp": 4,
    }
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for layer in reloaded.model.layers:
        assert layer.mlp.input_linear.weight.shape[0] == layer.mlp.output_linear.num_experts == 4
        assert layer.mlp.router.num_experts == 4
        assert layer.self_attention.experts.input_linear.weight.shape[0] == 8  # attention experts untouched
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=1e-5)


def test_switch_transformers_prunes_encoder_and_decoder_layers(tmp_path, tokenizer):
    from transformers import AutoModelForSeq2SeqLM

    from hf_moe_prune.pipeline.evaluation import evaluate
    from hf_moe_prune.testing import SAMPLE_TEXT

    model = tiny_model("switch_transformers", router_scale=4.0)
    assert [(b.name.split(".")[0], b.layer_idx) for b in find_blocks(model)] == [
        ("encoder", 0),
        ("encoder", 1),
        ("decoder", 2),
        ("decoder", 3),
    ]
    reference = copy.deepcopy(model)
    plan = hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.5, calibration=ROWS), progress=False)
    assert plan.is_uniform and model.config.num_experts == 4
    assert all(list(b.experts.keys()) == [f"expert_{i}" for i in range(4)] for b in find_blocks(model))
    # the decoder reconstructs its input: perplexity is exp(the model's own seq2seq loss), KL 0 against itself
    texts = [SAMPLE_TEXT] * 4
    result = evaluate(model, tokenizer, texts, reference=model, seq_len=24, max_rows=2, progress=False)
    rows = hf_moe_prune.calibration.calibration_rows(texts, tokenizer, 2, 24)
    with torch.no_grad():
        loss = model(input_ids=rows, labels=rows).loss.item()
    assert result.overall.perplexity == pytest.approx(math.exp(loss), rel=1e-4)
    assert result.overall.kl == pytest.approx(0.0, abs=1e-6)
    assert (
        evaluate(model, tokenizer, texts, reference=reference, seq_len=24, max_rows=2, progress=False).overall.kl > 0
    )
    model.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "AutoModelForSeq2SeqLM" in card and "text2text-generation" in card
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=0, atol=1e-5)


def test_family_census_of_the_installed_transformers():
    """`python -m hf_moe_prune.families`: every adapter is found and supported, the known exceptions carry their
    reason; a family new in this transformers is reported (a warning here): how the README count stays true."""
    import warnings

    from hf_moe_prune.adapters.base import UNSUPPORTED
    from hf_moe_prune.families import expert_families

    families = expert_families()
    assert {name for name, status in families.items() if status == "supported"} == set(ADAPTERS.names())
    for name in set(UNSUPPORTED) & set(families):
        assert families[name] == f"unsupported: {UNSUPPORTED[name]}"
    assert {"qwen3_moe", "deepseek_v3", "switch_transformers", "jetmoe", "nllb-moe"} <= set(families)
    unknown = sorted(name for name, status in families.items() if status == "unknown")
    if unknown:
        warnings.warn(f"MoE families without an adapter in this transformers: {unknown}", stacklevel=1)


def test_unsupported_family_names_the_reason():
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(
        "nllb-moe",
        d_model=32,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_experts=8,
        vocab_size=300,
    )
    with pytest.raises(ValueError, match="'nllb-moe'.*only expert_0 and expert_1 ever run"):
        hf_moe_prune.prune(AutoModel.from_config(config), MoEPruneConfig("frequency", 0.5, calibration=ROWS))


def test_expert_groups_no_calibration_token_reaches_are_named(caplog):
    """ERNIE-4.5-VL routes text and image tokens to separate expert groups; text calibration never reaches the vision
    groups, and pruning says so instead of silently ranking them on nothing."""
    model = tiny_model("ernie4_5_vl_moe_text", router_scale=4.0)
    names = [b.name for b in find_blocks(model)]
    assert sum(n.endswith("vision_moe") for n in names) == sum(n.endswith("text_moe") for n in names) == 2
    with caplog.at_level("WARNING", logger="hf_moe_prune.pipeline"):
        hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.5, calibration=ROWS), progress=False)
    assert "No calibration token was routed to 2 MoE block(s)" in caplog.text and "vision_moe" in caplog.text
    assert "text_moe" not in caplog.text
    for block in find_blocks(model):  # both groups and the layer's router-logits width follow the kept count
        assert block.num_experts == 4
    assert all(layer.mlp.num_experts == 4 for layer in model.model.language_model.layers[1:])


def test_checkpoint_of_a_family_built_with_another_familys_classes_keeps_its_type(tmp_path):
    """sarvam_moe is built with GLM-4-MoE's classes; loaded through `Glm4MoeForCausalLM.from_pretrained` its config
    is a Glm4MoeConfig, which transformers would save as `glm4_moe` beside sarvam-named weights. The pruned checkpoint
    keeps `sarvam_moe`, so it reloads whole."""
    import json

    tiny_model("sarvam_moe", router_scale=4.0).save_pretrained(tmp_path / "base")
    model_class = type(tiny_model("sarvam_moe"))
    model = model_class.from_pretrained(tmp_path / "base")
    hf_moe_prune.prune(model, MoEPruneConfig("reap", 0.5, calibration=ROWS), progress=False)
    model.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "sarvam_moe"
    reloaded = model_class.from_pretrained(tmp_path / "out")
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
