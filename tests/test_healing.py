"""Healing: the distillation after pruning (`MoEPruneConfig(healing=...)`), on the trained qwen3_moe fixture."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, PrunePlan, find_blocks
from hf_moe_prune.calibration import collect_stats
from hf_moe_prune.calibration.recorders import TeacherHook
from hf_moe_prune.calibration.teacher import record_teacher
from hf_moe_prune.healing import MasterAdamW, distillation_loss, heal, trainable_parameters
from hf_moe_prune.pipeline import prepare
from hf_moe_prune.pipeline.measure import measure
from hf_moe_prune.testing import fixture_path, tiny_model

from .conftest import HELD_OUT, pruned_copy


def test_the_calibration_pass_records_the_unpruned_models_top_k(held_out_fixture):
    """The teacher costs no extra pass: its targets are read off the calibration forwards, and equal the model's own
    log-probs at the recorded ids."""
    model, rows = held_out_fixture
    job = prepare(model, MoEPruneConfig("reap", 0.5, calibration=rows, healing=5, **HELD_OUT))
    hook = TeacherHook(model, top_k=16)
    collect_stats(model, job.blocks, frozenset({"count"}), job.rows, 4, progress=False, recorders=(hook,))
    recorded = hook.result()
    direct = record_teacher(model, job.rows, top_k=16, batch_size=4)
    assert torch.equal(recorded.rows, job.rows) and torch.equal(recorded.top_indices, direct.top_indices)
    torch.testing.assert_close(recorded.top_logprobs, direct.top_logprobs)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(job.rows[:2]).logits[:, :-1].float(), dim=-1)
    torch.testing.assert_close(recorded.top_logprobs[:2], log_probs.gather(-1, recorded.top_indices[:2]))


def test_the_loss_is_the_measured_kl(held_out_fixture):
    model, rows = held_out_fixture
    teacher = record_teacher(model, rows[:4], batch_size=4)
    student, _ = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, eval_fraction=0)
    with torch.no_grad():
        loss = distillation_loss(teacher, student(rows[:4]).logits[:, :-1])
    assert float(loss) == pytest.approx(measure(student, teacher, batch_size=4)["kl"], rel=1e-4)


@pytest.mark.parametrize("off", [0, None, {"steps": 0}])
def test_zero_steps_is_the_identity(held_out_fixture, off):
    model, rows = held_out_fixture
    plain, plain_plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows)
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing=off)
    assert plan.healing is None and plan.quality == plain_plan.quality
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), healed.state_dict().values()))


def test_healing_lowers_the_kl_and_never_trains_on_held_out_rows(held_out_fixture):
    model, rows = held_out_fixture
    config = MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 12, "eval_every": 4}, **HELD_OUT)
    held_out = {tuple(row.tolist()) for row in prepare(model, config).eval_rows}
    trained = []

    def spy(module, args, kwargs):
        if torch.is_grad_enabled():  # a training forward (calibration, teacher and measurement run without grad)
            trained.extend(tuple(row.tolist()) for row in kwargs["input_ids"])

    pruned = copy.deepcopy(model)
    handle = pruned.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        plan = hf_moe_prune.prune(pruned, config, progress=False)
    finally:
        handle.remove()
    healing = plan.healing
    assert len(trained) == 12 * 4 and not held_out & set(trained)
    assert set(trained) <= {tuple(row.tolist()) for row in rows}
    assert healing["steps"] == 12 and healing["train_rows"] == 9
    assert healing["train_kl_last"] < healing["train_kl_first"]
    assert healing["held_out_kl_after"] < healing["held_out_kl_before"]
    assert [h["step"] for h in healing["history"]] == [4, 8, 12]
    assert plan.quality["kl"] == pytest.approx(healing["held_out_kl_after"])  # the plan measures the healed model


def test_keep_best_ends_on_the_best_weights(held_out_fixture):
    """A learning rate far too high makes the model worse: with `keep_best` it ends on the unhealed weights."""
    model, rows = held_out_fixture
    plain, _ = pruned_copy(model, method="reap", ratio=0.5, calibration=rows)
    options = {"steps": 4, "eval_every": 2, "lr": 1.0, "warmup": 0, "patience": 0, "keep_best": True}
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing=options)
    assert plan.healing["history"][-1]["held_out_kl"] > plan.healing["held_out_kl_before"]
    assert plan.healing["held_out_kl_after"] == pytest.approx(plan.healing["held_out_kl_before"])
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), healed.state_dict().values()))


def test_early_stopping_on_the_held_out_kl(held_out_fixture):
    model, rows = held_out_fixture
    options = {"steps": 40, "eval_every": 1, "lr": 1.0, "warmup": 0, "patience": 2}
    _, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing=options)
    assert plan.healing["steps"] < 40 and plan.healing["stopped"].startswith("early stopping")


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_a_healed_checkpoint_reloads_exactly(held_out_fixture, tmp_path, allocation):
    model, rows = held_out_fixture
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, allocation=allocation, calibration=rows, healing=6)
    assert plan.healing["steps"] == 6
    healed.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(rows[:2]).logits, healed(rows[:2]).logits, rtol=0, atol=0)
    saved = PrunePlan.load(tmp_path / "out" / "moe_pruning_plan.json")
    assert saved.healing == plan.healing
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Healing" in card and "6 steps" in card


def test_streaming_heals_like_a_full_load(held_out_fixture):
    """The layer-by-layer pass carries the scoring rows through the unpruned layers: their final hidden states give
    the same teacher targets as the full forward, so the streamed, compact model heals as the fully loaded one."""
    model, rows = held_out_fixture
    config = MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 6, "eval_every": 3}, **HELD_OUT)
    streamed = hf_moe_prune.stream_prune(fixture_path("qwen3_moe"), config, progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=config)  # streams
    full, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, healing={"steps": 6, "eval_every": 3})
    for healed in (streamed, loaded):
        record = healed.moe_pruning_plan.healing
        assert record["steps"] == 6 and healed.moe_pruning_plan.calibration.get("streaming")
        assert record["held_out_kl_after"] < record["held_out_kl_before"]
        assert record["held_out_kl_after"] == pytest.approx(plan.healing["held_out_kl_after"], rel=1e-3)
    ids = rows[:2]
    with torch.no_grad():
        torch.testing.assert_close(streamed(ids).logits, full(ids).logits, rtol=1e-3, atol=1e-3)
    config = MoEPruneConfig("reap", 0.5, calibration=rows, healing=3, **HELD_OUT)
    with pytest.raises(hf_moe_prune.streaming.StreamingRefused, match="healing distils toward the unpruned"):
        hf_moe_prune.stream_prune(fixture_path("qwen3_moe"), config, propagation="pruned")


def test_options_are_checked_before_calibration(held_out_fixture):
    _, rows = held_out_fixture
    with pytest.raises(ValueError, match="did you mean 'steps'|Did you mean 'steps'"):
        MoEPruneConfig("reap", 0.5, calibration=rows, healing={"step": 3})
    with pytest.raises(ValueError, match="lr"):
        MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 3, "lr": -1})
    with pytest.raises(ValueError, match="train"):
        MoEPruneConfig("reap", 0.5, calibration=rows, healing={"steps": 3, "train": ["embeddings"]})
    with pytest.raises(TypeError, match="healing"):
        MoEPruneConfig("reap", 0.5, calibration=rows, healing="yes")
    config = MoEPruneConfig("random", 0.5, healing=3)
    with pytest.raises(ValueError, match="calibration"):
        prepare(tiny_model("qwen3_moe"), config)
    assert MoEPruneConfig("reap", 0.5, healing=7).healing["steps"] == 7


def test_what_trains(held_out_fixture):
    model, _ = held_out_fixture
    blocks = find_blocks(model)
    experts = trainable_parameters(model, ["experts"])
    assert {id(p) for p in experts} == {id(p) for b in blocks for m in b.expert_modules for p in m.parameters()}
    routers = trainable_parameters(model, ["routers"])
    assert {id(p) for p in routers} == {id(p) for b in blocks for p in b.router.parameters()}
    assert len(trainable_parameters(model, ["all"])) == len([p for p in model.parameters()])


def test_low_precision_weights_train_with_float32_state():
    model = tiny_model("qwen3_moe").to(torch.bfloat16)
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    teacher = record_teacher(model, rows, batch_size=4)
    student = copy.deepcopy(model)
    hf_moe_prune.prune(student, MoEPruneConfig("frequency", 0.5, calibration=rows, num_samples=4, seq_len=16))
    options = MoEPruneConfig("reap", 0.5, healing={"steps": 3, "lr": 1e-2, "warmup": 0}).healing
    before = {k: v.clone() for k, v in student.state_dict().items()}
    record = heal(student, teacher, options, progress=False)
    assert record["steps"] == 3 and all(p.dtype == torch.bfloat16 for p in student.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    params = trainable_parameters(student, options["train"])
    optimizer = MasterAdamW(params, 1e-3, 0.0)
    assert all(m.dtype == torch.float32 and m is not p for m, p in zip(optimizer.masters, params, strict=True))


def test_healing_without_held_out_rows_trains_every_row_and_says_so(held_out_fixture, tmp_path):
    model, rows = held_out_fixture
    healed, plan = pruned_copy(model, method="reap", ratio=0.5, calibration=rows, eval_fraction=0, healing=4)
    assert plan.quality is None and plan.healing["steps"] == 4 and plan.healing["train_rows"] == len(rows)
    assert "held_out_kl_before" not in plan.healing and plan.healing["stopped"] == "steps"
    healed.save_pretrained(tmp_path / "out")
    assert "## Healing" in (tmp_path / "out" / "README.md").read_text()
