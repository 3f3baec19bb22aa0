"""Healing through LoRA adapters (`healing={"lora": ...}`, peft): what trains, the merge, save/reload, the refusals."""

import copy
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, PrunePlan
from hf_moe_prune.calibration.runner import model_inputs
from hf_moe_prune.calibration.teacher import record_teacher
from hf_moe_prune.healing import LoraHealing, heal, lora_targets
from hf_moe_prune.pipeline.measure import measure
from hf_moe_prune.testing import tiny_model

from .conftest import pruned_copy

pytest.importorskip("peft")

EXPERT_STACKS = ("experts.gate_up_proj", "experts.down_proj")
LORA = {"steps": 8, "eval_every": 4, "lr": 1e-2, "warmup": 0, "lora": {"r": 2, "alpha": 4}}


def healing_options(**overrides):
    return MoEPruneConfig("reap", 0.5, healing={**LORA, **overrides}).healing


def no_peft_left(model):
    """No peft module, parametrization or attribute remains: the model is the plain transformers model."""
    peft = pytest.importorskip("peft")
    return not hasattr(model, "peft_config") and not any(
        isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) or hasattr(m, "parametrizations")
        for m in model.modules()
    )


def test_lora_healing_lowers_the_kl_and_records_the_adapters(held_out_fixture):
    model, rows = held_out_fixture
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing=LORA)
    healing = plan.healing
    assert healing["steps"] == 8 and healing["train_kl_last"] < healing["train_kl_first"]
    assert healing["held_out_kl_after"] < healing["held_out_kl_before"]
    assert plan.quality["kl"] == pytest.approx(healing["held_out_kl_after"])  # measured on the merged model
    lora = healing["lora"]
    assert lora["r"] == 2 and lora["alpha"] == 4 and lora["dropout"] == 0.0 and "unreached" not in lora
    # qwen3_moe: per layer the fused gate_up_proj and down_proj and the router's Parameter weight, all parameters
    layers = healed.config.num_hidden_layers
    assert lora["target_parameters"] == 3 * layers and lora["target_modules"] == 0
    experts = healed.model.layers[0].mlp.experts  # per expert: r × (in + out) for each of the two stacks
    e, two_i, h = experts.gate_up_proj.shape
    per_layer = 2 * e * (h + two_i) + 2 * e * (experts.down_proj.shape[2] + h) + 2 * (h + e)
    assert healing["trained_parameters"] == lora["adapter_parameters"] == layers * per_layer
    assert no_peft_left(healed)


def test_only_the_adapters_train_and_the_merge_adds_a_rank_r_update(held_out_fixture):
    model, rows = held_out_fixture
    student, _ = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, eval_fraction=0)
    teacher, held_out = record_teacher(model, rows[:8], batch_size=4), record_teacher(model, rows[8:], batch_size=4)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    weights = {id(p): p.detach().clone() for p in student.parameters()}
    seen = []

    def callback(step, model):  # while the adapters exist: the weights are frozen, only the adapters move
        params = list(model.parameters())
        frozen = all(torch.equal(p, weights[id(p)]) for p in params if id(p) in weights)
        adapters = [p for p in params if id(p) not in weights]
        seen.append((frozen, len(adapters), all(p.dtype == torch.float32 for p in adapters)))

    record = heal(
        student, teacher, healing_options(), held_out, measure, batch_size=4, progress=False, callback=callback
    )
    # per layer one wrapper on each expert stack and one on the router weight, each with float32 lora_A and lora_B
    layers = range(student.config.num_hidden_layers)
    assert record["steps"] == 8 and seen == [(True, 2 * 3 * len(layers), True)] * 2
    after = student.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"model.layers.{i}.mlp.{n}" for i in layers for n in ("gate.weight", *EXPERT_STACKS)}
    for key in changed:
        delta = (after[key] - before[key]).double()
        per_expert = delta if delta.dim() == 3 else delta[None]
        ranks = [int(torch.linalg.matrix_rank(d, rtol=1e-4)) for d in per_expert]  # above float32 rounding
        assert all(1 <= rank <= 2 for rank in ranks)  # r = 2 for every expert
    assert no_peft_left(student)


def test_keep_best_ends_on_the_unhealed_weights(held_out_fixture):
    """A learning rate far too high makes the model worse: `keep_best` keeps the adapters of the start (zero
    updates), so the merge leaves the pruned weights exactly."""
    model, rows = held_out_fixture
    options = {**LORA, "steps": 4, "eval_every": 2, "lr": 1.0, "patience": 0, "keep_best": True}
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing=options)
    plain = hf_moe_prune.apply_plan(copy.deepcopy(model), plan)  # the same experts, unhealed
    assert plan.healing["history"][-1]["held_out_kl"] > plan.healing["held_out_kl_before"]
    assert plan.healing["ended_on_best"] and plan.healing["held_out_kl_after"] == plan.healing["held_out_kl_before"]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), healed.state_dict().values()))


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_a_lora_healed_checkpoint_is_a_plain_checkpoint(held_out_fixture, tmp_path, allocation):
    model, rows = held_out_fixture
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, allocation=allocation, calibration=rows, healing=LORA)
    plain = hf_moe_prune.apply_plan(copy.deepcopy(model), plan)  # the same experts, unhealed
    plain.save_pretrained(tmp_path / "plain")
    healed.save_pretrained(tmp_path / "healed")
    assert tensors(tmp_path / "healed") == tensors(tmp_path / "plain")  # same names and shapes: no adapter tensors
    # uniform: a stock transformers checkpoint; global: it loads through hf_moe_prune's quantizer, which
    # `import hf_moe_prune` (above) registers
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "healed")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(rows[:2]).logits, healed(rows[:2]).logits, rtol=0, atol=0)
        assert not torch.equal(reloaded(rows[:2]).logits, plain(rows[:2]).logits)
    assert PrunePlan.load(tmp_path / "healed" / "moe_pruning_plan.json").healing == plan.healing
    card = (tmp_path / "healed" / "README.md").read_text()
    assert "LoRA adapters (peft, rank 2, alpha 4)" in card and "merged into the weights" in card


def tensors(path):
    shapes = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


@pytest.mark.parametrize(
    "family, train",
    [
        ("qwen2_moe", ["experts", "routers", "shared"]),  # shared experts and the shared gate are nn.Linear
        ("gpt_oss", ["experts", "routers"]),  # per-expert bias tables [E, n] beside the [E, n, m] stacks stay frozen
        ("phimoe", ["routers"]),  # a router subclassing nn.Linear with a tuple-returning forward: a parameter target
        ("switch_transformers", ["experts"]),  # experts as a ModuleDict of nn.Linear: module targets, per expert
    ],
)
def test_the_merge_equals_the_adapted_forward(family, train):
    """Whatever the layout, what trains is what is merged: random adapters give the same outputs before and after
    the merge, vectors never change, and the state dict keeps its keys and shapes."""
    model = tiny_model(family)
    ids = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules, params = lora_targets(model, train)
    assert modules or params
    session = LoraHealing(model, healing_options(train=train), model_inputs(model, ids[:1]))
    with torch.no_grad():
        for p in session.parameters:
            p.add_(torch.randn_like(p) * 0.05)
        adapted = logits(model, ids)
        session.merge()
        merged = logits(model, ids)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4 * float(adapted.abs().max()))
    after = model.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(after[k], v) for k, v in before.items() if v.dim() < 2 or k.endswith("_bias"))
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    assert no_peft_left(model)


def logits(model, ids):
    output = model(**model_inputs(model, ids), use_cache=False)
    return output.logits


def test_low_precision_weights_stay_frozen_in_their_dtype_under_float32_adapters():
    model = tiny_model("qwen2_moe").to(torch.bfloat16)  # fused experts and a router Parameter, linear shared experts
    ids = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    teacher = record_teacher(copy.deepcopy(model).float(), ids, batch_size=4)  # a float32 teacher: a gap to close
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = LoraHealing(model, healing_options(), model_inputs(model, ids[:1]))
    dtypes = {p.dtype for p in session.parameters}
    session.discard()
    record = heal(model, teacher, healing_options(steps=3), progress=False)
    assert dtypes == {torch.float32} and record["lora"]["target_modules"] > 0 and record["lora"]["target_parameters"]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and no_peft_left(model)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_options_are_checked_before_calibration(held_out_fixture):
    _, rows = held_out_fixture
    for typo, meant in (("rank", "r"), ("lora_alpha", "alpha"), ("dropuot", "dropout")):
        with pytest.raises(ValueError, match=f"Did you mean '{meant}'"):
            MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 3, "lora": {typo: 4}})
    for bad in ({"r": 0}, {"r": 2.5}, {"r": True}, {"alpha": 0}, {"dropout": 1.0}, {"dropout": -0.1}):
        with pytest.raises(ValueError, match=f"healing.lora.{next(iter(bad))}"):
            MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 3, "lora": bad})
    with pytest.raises(TypeError, match="healing.lora"):
        MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 3, "lora": "yes"})
    assert MoEPruneConfig("reap", 0.5, healing={"steps": 3, "lora": True}).healing["lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
    }
    assert MoEPruneConfig("reap", 0.5, healing={"steps": 3, "lora": False}).healing["lora"] is None
    options = healing_options()
    assert MoEPruneConfig("reap", 0.5, healing=options).healing == options  # normalised options read back the same


def test_layouts_peft_cannot_adapt_are_refused_before_training():
    ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    # dropout: peft has none for tensors adapted as parameters (qwen3_moe's fused experts and router weight)
    qwen = tiny_model("qwen3_moe")
    with pytest.raises(ValueError, match="dropout"):
        heal(qwen, record_teacher(qwen, ids, batch_size=2), healing_options(lora={"dropout": 0.1}), progress=False)
    assert no_peft_left(qwen)
    # DBRX's experts read their `mlp`'s tensors from outside it: the probe forward fails, the model is left as it was
    dbrx = tiny_model("dbrx")
    before = {k: v.clone() for k, v in dbrx.state_dict().items()}
    with pytest.raises(ValueError, match="does not run with peft's LoRA wrappers"):
        heal(dbrx, record_teacher(dbrx, ids, batch_size=2), healing_options(), progress=False)
    assert no_peft_left(dbrx) and all(torch.equal(v, dbrx.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in dbrx.parameters())


def test_a_failure_during_training_leaves_the_weights_as_they_were():
    model = tiny_model("qwen3_moe")
    ids = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    teacher = record_teacher(copy.deepcopy(model).to(torch.bfloat16).float(), ids, batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def interrupt(step, model):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        heal(model, teacher, healing_options(eval_every=1), teacher, measure, progress=False, callback=interrupt)
    assert no_peft_left(model) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_missing_peft_says_how_to_install_it(held_out_fixture, monkeypatch):
    model, rows = held_out_fixture
    options = healing_options()
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed: `import peft` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "hf-moe-prune\[healing\]"'):
        MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 3, "lora": True})
    student, teacher = copy.deepcopy(model), record_teacher(model, rows[:2], batch_size=2)
    with pytest.raises(ImportError, match="pip install peft"):
        heal(student, teacher, options, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), student.state_dict().values()))
    # healing without lora needs no peft
    assert heal(student, teacher, {**options, "steps": 1, "lora": None}, progress=False)["steps"] == 1
