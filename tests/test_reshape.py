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
