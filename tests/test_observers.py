import pytest
import torch
import torch.nn.functional as F

from hf_moe_prune import find_blocks
from hf_moe_prune.calibration import ExpertObserver, collect_stats
from hf_moe_prune.methods import PAIR_STATISTICS, STATISTICS
from hf_moe_prune.testing import tiny_model

# (token, first expert, second expert): the router below sends each token to exactly these two.
ROUTES = [(0, 1), (0, 2), (3, 1), (5, 6), (5, 0), (7, 3), (0, 1)]


def _fixed_routing_block(norm_topk_prob):
    model = tiny_model("qwen3_moe", norm_topk_prob=norm_topk_prob)
    block = find_blocks(model)[0]
    hidden = block.experts.gate_up_proj.shape[-1]
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[:, :8] = 4.0 * torch.eye(8)  # logit of expert j = 4 * x[j]
    x = torch.zeros(len(ROUTES), hidden)
    for t, (a, b) in enumerate(ROUTES):
        x[t, a], x[t, b] = 2.0, 1.0  # logits 8 and 4 for a and b, 0 elsewhere
        x[t, 8 + t] = 0.5  # distinct tokens, outside the router's view
    return block, x


def _expert_output(experts, j, x):
    return F.linear(_activations(experts, j, x), experts.down_proj[j])


def _activations(experts, j, x):
    gate, up = F.linear(x, experts.gate_up_proj[j]).chunk(2, dim=-1)
    return F.silu(gate) * up


EXPERT_STATISTICS = ("count", "gate_sum", "norm_sum", "gate_norm_sum")


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("outputs", [True, False])
def test_statistics_equal_hand_computed_values(norm_topk_prob, outputs):
    block, x = _fixed_routing_block(norm_topk_prob)
    names = frozenset(STATISTICS) - PAIR_STATISTICS if outputs else frozenset({"count", "gate_sum"})
    observer = ExpertObserver(block, names)
    observer.attach()
    try:
        with torch.no_grad():
            observed_output = block.module(x.unsqueeze(0))
    finally:
        observer.detach()
    with torch.no_grad():
        plain_output = block.module(x.unsqueeze(0))
    torch.testing.assert_close(observed_output, plain_output, rtol=1e-5, atol=1e-6)  # observing changes nothing

    width = block.experts.down_proj.shape[-1]
    expected = {n: torch.zeros(8, dtype=torch.float64) for n in frozenset(STATISTICS) - PAIR_STATISTICS}
    expected["neuron_magnitude"] = torch.zeros(8, width, dtype=torch.float64)
    expected["neuron_projection"] = torch.zeros(8, width, dtype=torch.float64)
    denominator = 8 - 2  # softmax over logits (8, 4, 0 x 6)
    p_a, p_b = torch.tensor([8.0, 4.0]).exp() / (torch.tensor([8.0, 4.0]).exp().sum() + denominator)
    if norm_topk_prob:
        p_a, p_b = p_a / (p_a + p_b), p_b / (p_a + p_b)
    with torch.no_grad():
        for t, (a, b) in enumerate(ROUTES):
            for j, g in ((a, p_a), (b, p_b)):
                output = _expert_output(block.experts, j, x[t])
                norm = output.norm().item()
                expected["count"][j] += 1
                expected["gate_sum"][j] += g.item()
                expected["norm_sum"][j] += norm
                expected["gate_norm_sum"][j] += g.item() * norm
                turn = 1 - F.cosine_similarity(x[t], x[t] + g * output, dim=0).item()
                expected["direction_sum"][j] += g.item() * norm * turn
                active, down = _activations(block.experts, j, x[t]), block.experts.down_proj[j]  # [I], [hidden, I]
                expected["neuron_magnitude"][j] += (active.abs() * down.norm(dim=0)).double()
                expected["neuron_projection"][j] += (active * (output / norm @ down)).double()
    stats = observer.stats
    assert stats.tokens == len(ROUTES)
    for name in names:
        torch.testing.assert_close(stats[name], expected[name], rtol=1e-5, atol=1e-6)
    assert stats["count"].tolist() == [4, 3, 1, 2, 0, 2, 1, 1]


def test_hooks_are_removed_when_a_forward_raises():
    model = tiny_model("olmoe")
    blocks = find_blocks(model)
    bad_rows = torch.full((2, 8), 10_000)  # token ids outside the vocabulary: the embedding raises
    with pytest.raises(IndexError):
        collect_stats(model, blocks, frozenset(STATISTICS), bad_rows, batch_size=1, progress=False)
    with pytest.raises(IndexError):
        collect_stats(model, blocks, frozenset({"count"}), bad_rows, batch_size=1, progress=False)
    for block in blocks:
        assert "forward" not in vars(block.experts)
        assert not block.experts._forward_pre_hooks and not block.experts._forward_hooks


def test_statistics_add_up_over_batches():
    model = tiny_model("mixtral")
    blocks = find_blocks(model)
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    whole = collect_stats(model, blocks, frozenset(STATISTICS), rows, batch_size=4, progress=False)
    split = collect_stats(model, blocks, frozenset(STATISTICS), rows, batch_size=1, progress=False)
    for name in whole:
        assert whole[name].tokens == split[name].tokens == 64
        for stat in STATISTICS:
            torch.testing.assert_close(whole[name][stat], split[name][stat], rtol=1e-5, atol=1e-5)
        assert whole[name]["count"].sum() == 64 * 2


def test_llama4_style_statistics_read_gated_inputs():
    """Llama-4 scales each expert's input by its gate and runs all experts: stats must use the selected ones only."""
    model = tiny_model("llama4_text", router_scale=4.0)
    block = find_blocks(model)[0]
    x = torch.randn(5, block.experts.hidden_size, generator=torch.Generator().manual_seed(0))
    observer = ExpertObserver(block, frozenset(EXPERT_STATISTICS))
    observer.attach()
    try:
        with torch.no_grad():
            block.module(x.unsqueeze(0))
    finally:
        observer.detach()
    with torch.no_grad():
        scores, _ = block.router(x)
        gates, index = torch.topk(scores, block.top_k, dim=-1)
        expected = {n: torch.zeros(block.num_experts, dtype=torch.float64) for n in EXPERT_STATISTICS}
        for t in range(5):
            for g, j in zip(gates[t].tolist(), index[t].tolist()):
                inp = (g * x[t]).view(1, 1, -1)
                gate, up = torch.bmm(inp, block.experts.gate_up_proj[j : j + 1]).chunk(2, dim=-1)
                norm = torch.bmm(up * F.silu(gate), block.experts.down_proj[j : j + 1]).norm().item()
                expected["count"][j] += 1
                expected["gate_sum"][j] += g
                expected["norm_sum"][j] += norm
                expected["gate_norm_sum"][j] += norm  # the gate is inside f_j(g * x)
    for name in EXPERT_STATISTICS:
        torch.testing.assert_close(observer.stats[name], expected[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not available for this family"):
        ExpertObserver(block, frozenset({"count", "direction_sum"})).attach()
    assert not block.router._forward_hooks and not block.experts._forward_hooks


def _observe(block, x, names):
    """Run `block` on `x` with an observer attached and without; check observing changes nothing; the statistics."""
    observer = ExpertObserver(block, frozenset(names))
    observer.attach()
    try:
        with torch.no_grad():
            observed = block.module(x)
    finally:
        observer.detach()
    with torch.no_grad():
        plain = block.module(x)
    if isinstance(plain, tuple):  # ZaYA's block also returns its router states for the next layer
        observed, plain = observed[0], plain[0]
    torch.testing.assert_close(observed, plain, rtol=1e-5, atol=1e-6)  # observing changes nothing
    return observer.stats


@pytest.mark.parametrize("family", ["longcat_flash", "zaya"])
def test_trailing_router_picks_are_no_expert_usage(family):
    """LongCat-Flash's zero experts reach the experts as indices >= E, ZaYA's skip as expert 0 with gate 0: neither
    is use of a routed expert, and observing changes nothing."""
    model = tiny_model(family, router_scale=4.0)
    block = find_blocks(model)[0]
    x = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(0))
    if family == "zaya":  # its -1 skip bias at init keeps the skip class from ever winning: let half the tokens skip
        with torch.no_grad():
            probs = block.router(x)[0].softmax(-1)
            block.router.balancing_biases[-1] = (probs[:, :8].max(-1).values - probs[:, 8]).median()
    routed = []
    handle = block.router.register_forward_hook(lambda m, a, out: routed.append(out[0].detach()))
    try:
        stats = _observe(block, x, EXPERT_STATISTICS)
    finally:
        handle.remove()
    bias = block.router.get_buffer("balancing_biases" if family == "zaya" else "e_score_correction_bias")
    picks = (routed[0].softmax(-1) + bias).topk(block.top_k, dim=-1).indices
    real = picks[picks < 8]
    assert 0 < real.numel() < picks.numel()  # both routed and trailing picks happen
    torch.testing.assert_close(stats["count"], torch.bincount(real, minlength=8).double())


@pytest.mark.parametrize("outputs", [True, False])
def test_jetmoe_sorted_dispatch_statistics(outputs):
    """JetMoE's router sorts the (token, slot) rows by expert and its experts live in two modules: the statistics
    must pair each row with its expert, its softmax-over-top-k gate and its ungated output."""
    model = tiny_model("jetmoe", router_scale=4.0)
    block = find_blocks(model)[0]
    x = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(0))
    names = EXPERT_STATISTICS if outputs else ("count", "gate_sum")
    stats = _observe(block, x, names)
    expected = {n: torch.zeros(8, dtype=torch.float64) for n in EXPERT_STATISTICS}
    with torch.no_grad():
        logits = block.router.layer(x[0])
        top, index = logits.topk(2, dim=-1)
        gates = top.softmax(-1)
        for t in range(12):
            for g, j in zip(gates[t].tolist(), index[t].tolist(), strict=True):
                gate, up = F.linear(x[0, t], block.module.input_linear.weight[j]).chunk(2, dim=-1)
                norm = F.linear(F.silu(gate) * up, block.module.output_linear.weight[j]).norm().item()
                expected["count"][j] += 1
                expected["gate_sum"][j] += g
                expected["norm_sum"][j] += norm
                expected["gate_norm_sum"][j] += g * norm
    assert stats.tokens == 12
    for name in names:
        torch.testing.assert_close(stats[name], expected[name], rtol=1e-5, atol=1e-6)
    assert not block.router._forward_hooks and not block.module.output_linear._forward_hooks


def test_switch_dispatch_mask_statistics_skip_tokens_over_capacity():
    """Switch Transformers calls its experts with a one-hot dispatch mask; a token over its expert's capacity gets no
    expert and must count as no one's use."""
    model = tiny_model("switch_transformers", router_scale=4.0)
    block = find_blocks(model)[0]
    block.router.expert_capacity = 2
    x = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(0))
    stats = _observe(block, x, EXPERT_STATISTICS)
    expected = {n: torch.zeros(8, dtype=torch.float64) for n in EXPERT_STATISTICS}
    with torch.no_grad():
        probs = block.router.classifier(x[0]).softmax(-1)
        taken = [0] * 8
        for t in range(24):
            j = int(probs[t].argmax())
            taken[j] += 1
            if taken[j] > 2:  # over capacity: the token skips the layer
                continue
            g = float(probs[t, j])
            norm = block.experts[f"expert_{j}"](x[0, t]).norm().item()
            expected["count"][j] += 1
            expected["gate_sum"][j] += g
            expected["norm_sum"][j] += norm
            expected["gate_norm_sum"][j] += g * norm
    assert sum(taken) > expected["count"].sum() > 0  # some tokens overflowed, some were routed
    for name in EXPERT_STATISTICS:
        torch.testing.assert_close(stats[name], expected[name], rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(block.experts)
