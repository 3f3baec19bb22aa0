"""Compensation as a reusable step, and the layer-adaptive methods end to end, on the trained fixture."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.compensation import COMPENSATIONS, CompensationContext, reconstruction_error
from hf_moe_prune.testing import fixture_path, mixed_texts


@pytest.fixture(scope="module")
def fixture():
    path = fixture_path("qwen3_moe")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _inputs(model, tokenizer, tokens=1024):
    ids = tokenizer(" ".join(mixed_texts())[:20000], return_tensors="pt").input_ids[:, :tokens]
    block = find_blocks(model)[1]
    captured = {}

    def hook(module, args):
        captured.setdefault("x", args[0].reshape(-1, args[0].shape[-1]))

    handle = block.module.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return block, captured["x"]


@pytest.mark.parametrize("name", ["none", "merge", "fisher"])
def test_nothing_pruned_is_identity(fixture, name):
    model = copy.deepcopy(fixture[0])
    block, x = _inputs(model, fixture[1])
    before = {k: v.clone() for k, v in block.experts.state_dict().items()}
    COMPENSATIONS.get(name)(block, list(range(block.num_experts)), CompensationContext(inputs=x))
    for k, v in block.experts.state_dict().items():
        assert torch.equal(v, before[k])


def test_fisher_reduces_reconstruction_error(fixture):
    model = copy.deepcopy(fixture[0])
    block, x = _inputs(model, fixture[1])
    kept = list(range(0, block.num_experts, 2))
    held_out, fit = x[::2], x[1::2]
    before = reconstruction_error(block, kept, held_out)
    before_fit = reconstruction_error(block, kept, fit)
    COMPENSATIONS.get("fisher")(block, kept, CompensationContext(inputs=fit))
    assert reconstruction_error(block, kept, fit) < 0.8 * before_fit
    assert reconstruction_error(block, kept, held_out) < before  # generalises to other tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "compel"},
        {"method": "diep", "method_kwargs": {"steps": 4}},
        {"method": "reap", "allocation": "global", "compensation": "merge"},
    ],
)
def test_adaptive_methods_prune_to_exact_budget(fixture, kwargs):
    model = copy.deepcopy(fixture[0])
    config = MoEPruneConfig(ratio=0.5, calibration=mixed_texts(), num_samples=8, seq_len=64, **kwargs)
    plan = hf_moe_prune.prune(model, config, tokenizer=fixture[1], progress=False)
    assert sum(b.num_kept for b in plan.blocks) == sum(b.num_experts for b in plan.blocks) // 2
    assert all(b.num_kept >= 2 for b in plan.blocks)
    ids = torch.randint(0, 100, (1, 16))
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("family", ["switch_transformers", "jetmoe"])
def test_merge_folds_experts_kept_in_modules_or_split_over_modules(family):
    """Switch keeps one module per expert, JetMoE splits each expert over two modules: merge averages all of it."""
    from hf_moe_prune.testing import tiny_model

    block = find_blocks(tiny_model(family))[0]
    before = [(name, p.detach().clone(), e) for name, p, e in block.expert_weights()]
    # two fused [E, ...] tensors (JetMoE), or wi/wo of each of the 8 expert modules (Switch)
    assert len(before) == (2 if family == "jetmoe" else 16)
    usage = torch.arange(1.0, 9.0, dtype=torch.float64)
    context = CompensationContext(stats={"gate_sum": usage})
    kept = [0, 1, 2, 3]
    router = F.normalize(block.router_weight.detach().float(), dim=-1)
    target = {e: kept[int((router[e] @ router[kept].T).argmax())] for e in range(4, 8)}
    assert set(target.values()) != {0}  # the test is only as good as the merges it sees
    COMPENSATIONS.get("merge")(block, kept, context)
    after = [p for _, p, _ in block.expert_weights()]

    def original(i, m):  # expert m's original tensor of the same kind as entry i
        name, old, e = before[i]
        return old[m] if e is None else next(o for n, o, x in before if n == name and x == m)

    for i, (_, _, e) in enumerate(before):
        for r in kept if e is None else [e] if e in kept else []:
            members = [r, *(d for d, t in target.items() if t == r)]
            w = usage[members] / usage[members].sum()
            expected = sum(original(i, m).double() * w[j] for j, m in enumerate(members)).float()
            got = after[i][r] if e is None else after[i]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
