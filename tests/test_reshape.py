import copy

import pytest
import torch

import hf_moe_prune
from hf_moe_prune import BlockPlan, PrunePlan, find_blocks
from hf_moe_prune.reshape import mask_experts
from hf_moe_prune.testing import tiny_model

from .conftest import FAMILIES


def _plan(model, kept_by_layer):
    blocks = find_blocks(model)
    return PrunePlan(
        method="manual",
        model_type=model.config.model_type,
        blocks=[BlockPlan(b.name, b.layer_idx, b.num_experts, kept_by_layer[i]) for i, b in enumerate(blocks)],
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_identity(family, input_ids):
    model = tiny_model(family)
    reference = model(input_ids).logits
    hf_moe_prune.apply_plan(model, _plan(model, [list(range(8))] * 2))
    torch.testing.assert_close(model(input_ids).logits, reference, rtol=0, atol=0)


# Both gate conventions for every family that has the switch (Mixtral always renormalizes).
CASES = [(f, n) for f in FAMILIES for n in ((None,) if f == "mixtral" else (True, False))]


@pytest.mark.parametrize("family, norm_topk_prob", CASES)
def test_slicing_equals_masking_in_the_router(family, norm_topk_prob, input_ids):
    overrides = {} if norm_topk_prob is None else {"norm_topk_prob": norm_topk_prob}
    model = tiny_model(family, **overrides)
    kept = [[0, 2, 3, 7], [1, 4, 5]]  # non-uniform on purpose
    with mask_experts(find_blocks(model), {b.name: kept[i] for i, b in enumerate(find_blocks(model))}):
        masked = model(input_ids).logits
    unmasked = model(input_ids).logits
    assert (masked - unmasked).abs().max() > 1e-4  # the mask really changed the routing
    sliced = copy.deepcopy(model)
    hf_moe_prune.apply_plan(sliced, _plan(sliced, kept))
    blocks = find_blocks(sliced)
    assert [b.num_experts for b in blocks] == [4, 3]
    assert [b.experts.num_experts for b in blocks] == [4, 3]
    torch.testing.assert_close(sliced(input_ids).logits, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_experts_and_other_weights_untouched(family):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hf_moe_prune.apply_plan(model, _plan(model, [[0, 1, 2, 3]] * 2))
    after = model.state_dict()
    block_names = [b.name for b in find_blocks(model)]
    for key, value in before.items():
        routed = any(key.startswith(f"{n}.experts.") or key.startswith(f"{n}.gate.") for n in block_names)
        if routed:
            assert after[key].shape[0] == 4
            torch.testing.assert_close(after[key], value[:4])
        else:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_uniform_plan_patches_every_expert_count_key():
    model = tiny_model("qwen3_moe")
    hf_moe_prune.apply_plan(model, _plan(model, [[0, 1, 2, 3, 4, 5]] * 2))
    data = model.config.to_dict()
    assert data["num_experts"] == data["num_local_experts"] == 6
    assert model.config.moe_pruning["kept_experts"]["model.layers.0.mlp"] == [0, 1, 2, 3, 4, 5]


def test_plan_for_another_model_is_refused():
    model = tiny_model("qwen3_moe")
    plan = _plan(model, [[0, 1], [0, 1]])
    plan.blocks[0].num_experts = 16
    with pytest.raises(ValueError, match="plan was made for 16"):
        hf_moe_prune.apply_plan(model, plan)


def _with_trailing_picks(family):
    """A tiny model whose routers really pick their trailing classes: LongCat-Flash's zero (identity) experts, and
    Zaya's skip class (its -1 balancing bias at init keeps it from ever winning)."""
    model = tiny_model(family, router_scale=4.0)
    if family == "zaya":  # a skip bias between the skip and best-expert probabilities: about half the tokens skip
        blocks, probs = find_blocks(model), []
        handles = [b.router.register_forward_hook(lambda m, a, out: probs.append(out[0].softmax(-1))) for b in blocks]
        with torch.no_grad():
            model(torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(1)))
            for block, p in zip(blocks, probs):
                block.router.balancing_biases[-1] = (p[:, :8].max(-1).values - p[:, 8]).median()
        for handle in handles:
            handle.remove()
    return model


@pytest.mark.parametrize("family", ["inkling_text", "longcat_flash", "zaya"])
def test_trailing_router_rows_are_kept_and_never_masked(family, tmp_path):
    model = _with_trailing_picks(family)
    ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    blocks = find_blocks(model)
    trailing = blocks[0].trailing_rows
    assert trailing and [b.num_experts for b in blocks] == [8, 8]
    if family != "inkling_text":  # Inkling's shared-expert rows are not picks: they always gate the shared experts
        picks = []
        handles = [b.router.register_forward_hook(lambda m, a, out: picks.append(out[0].detach())) for b in blocks]
        with torch.no_grad():
            model(ids)
        for handle in handles:
            handle.remove()
        for logits, block in zip(picks, blocks):
            bias = block.router.get_buffer("balancing_biases" if family == "zaya" else "e_score_correction_bias")
            scores = logits.softmax(-1) + bias
            picks = scores.topk(block.top_k, dim=-1).indices
            assert (picks >= 8).any() and (picks < 8).any()  # the test exercises trailing and routed picks
    kept = [[0, 2, 3, 7], [1, 4, 5]]  # non-uniform on purpose
    if family == "zaya":  # its skip class sits at `config.num_experts`, which all layers share
        with pytest.raises(ValueError, match="same number of experts in every layer"):
            hf_moe_prune.apply_plan(copy.deepcopy(model), _plan(model, kept))
        kept = [[0, 2, 3, 7], [1, 4, 5, 6]]
    with mask_experts(blocks, {b.name: kept[i] for i, b in enumerate(blocks)}):
        masked = model(ids).logits
    sliced = copy.deepcopy(model)
    hf_moe_prune.apply_plan(sliced, _plan(sliced, kept))
    sliced_blocks = find_blocks(sliced)
    assert [b.num_experts for b in sliced_blocks] == [len(k) for k in kept]
    for block, before, keep in zip(sliced_blocks, blocks, kept):
        rows = keep + list(range(8, 8 + trailing))
        torch.testing.assert_close(block.router_weight, before.router_weight[rows], rtol=0, atol=0)
    torch.testing.assert_close(sliced(ids).logits, masked, rtol=1e-5, atol=1e-5)
    sliced.save_pretrained(tmp_path / "out")
    reloaded = type(sliced).from_pretrained(tmp_path / "out")
    assert [b.num_experts for b in find_blocks(reloaded)] == [len(k) for k in kept]
    if family == "zaya":
        # transformers' `ZayaPreTrainedModel._init_weights` resets the skip bias to -1 after loading (an indexed write
        # that bypasses the loaded-weights guard), for unpruned checkpoints too: the checkpoint holds the right value.
        with torch.no_grad():
            for block, source in zip(find_blocks(reloaded), find_blocks(sliced)):
                assert block.router.balancing_biases[-1] == -1.0
                block.router.balancing_biases[-1] = source.router.balancing_biases[-1]
    expected = sliced.state_dict()
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    torch.testing.assert_close(reloaded(ids).logits, sliced(ids).logits, rtol=0, atol=0)
