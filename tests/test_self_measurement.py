"""Every prune measures itself: calibration rows held out from scoring, the unpruned model's targets on them, and the
pruned model's KL, top-1 agreement and perplexity against them, in the plan, config.json, the card and the CLI."""

import argparse
import copy
import importlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, PrunePlan, cli
from hf_moe_prune.calibration.teacher import NotALanguageModel, record_teacher
from hf_moe_prune.cli.parser import build_parser
from hf_moe_prune.cli.prune import prune_config
from hf_moe_prune.cli.report import print_report
from hf_moe_prune.pipeline import prepare
from hf_moe_prune.pipeline.measure import hold_out, measure
from hf_moe_prune.streaming import stream_prune
from hf_moe_prune.testing import fixture_path, mixed_texts, tiny_config

RUN = importlib.import_module("hf_moe_prune.pipeline.run")  # the module (the package exports the function `run`)
VOCAB = 4096  # the trained fixture's
ROWS = torch.randint(5, VOCAB, (12, 32), generator=torch.Generator().manual_seed(0))
SMALL = {"num_samples": 12, "seq_len": 64, "batch_size": 4}


@pytest.fixture(scope="module")
def fixture_model():
    return AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe")).eval()


@pytest.fixture(scope="module")
def pruned_pair(fixture_model):
    """The unpruned fixture and a REAP-50% copy of it (held-out measurement off)."""
    student = copy.deepcopy(fixture_model)
    hf_moe_prune.prune(student, MoEPruneConfig("reap", 0.5, calibration=ROWS, eval_fraction=0), progress=False)
    return fixture_model, student


def _prune(config, model=None):
    model = model or AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"))
    return model, hf_moe_prune.prune(model, config, progress=False)


@pytest.mark.parametrize("value", [1, 1.5, -0.1, float("nan"), True, "0.1", None])
def test_bad_eval_fraction_is_refused_before_calibration(value, fixture_model, monkeypatch):
    def calibrate(*args, **kwargs):
        raise AssertionError("calibration ran")

    monkeypatch.setattr(RUN, "collect_stats", calibrate)
    with pytest.raises(ValueError, match=r"eval_fraction must be a number in \[0, 1\)"):
        config = {"method": "reap", "ratio": 0.5, "calibration": ROWS, "eval_fraction": value}
        hf_moe_prune.prune(fixture_model, config)


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "nan", "a tenth"])
def test_bad_eval_fraction_flag_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["prune", "--eval-fraction", value, "--no-eval"])
    assert error.value.code == 2 and "--eval-fraction: must be" in capsys.readouterr().err


SCORED = [0, 1, 2, 4, 5, 6, 8, 9, 10]  # eval_fraction=0.25 of 12 rows holds out every fourth: 3, 7, 11


def test_hold_out_takes_evenly_spaced_rows_and_leaves_at_least_one_to_score():
    scoring, held, reason = hold_out(ROWS, 0.25)
    assert torch.equal(scoring, ROWS[SCORED]) and torch.equal(held, ROWS[[3, 7, 11]]) and reason is None
    assert len(hold_out(ROWS, 0.01)[1]) == 1  # at least one row
    assert len(hold_out(ROWS[:2], 0.9)[0]) == 1  # at least one scoring row
    assert hold_out(ROWS, 0) == (ROWS, None, None)
    scoring, held, reason = hold_out(ROWS[:1], 0.5)
    assert held is None and "only 1 calibration row" in reason


@pytest.mark.parametrize("method", ["frequency", "reap"])
def test_held_out_rows_are_never_seen_by_the_observers(method, monkeypatch):
    seen = []
    original = RUN.collect_stats

    def spy(model, blocks, requires, rows, *args, **kwargs):
        seen.append(rows.clone())
        return original(model, blocks, requires, rows, *args, **kwargs)

    monkeypatch.setattr(RUN, "collect_stats", spy)
    _, held_out = _prune(MoEPruneConfig(method, 0.5, calibration=ROWS, eval_fraction=0.25, batch_size=4))
    _, alone = _prune(MoEPruneConfig(method, 0.5, calibration=ROWS[SCORED], eval_fraction=0, batch_size=4))
    assert torch.equal(seen[0], ROWS[SCORED]) and torch.equal(seen[1], ROWS[SCORED])
    # statistics of the scoring rows alone: the same scores, the same plan
    assert [b.scores for b in held_out.blocks] == [b.scores for b in alone.blocks]
    assert [b.kept for b in held_out.blocks] == [b.kept for b in alone.blocks]
    assert held_out.calibration["rows"] == 9 and held_out.calibration["held_out_rows"] == 3
    assert held_out.quality["rows"] == 3 and held_out.quality["tokens"] == 3 * 31
    # eval_fraction=0: every row scored, no quality block, nothing held out
    assert alone.quality is None and "held_out_rows" not in alone.calibration and alone.calibration["rows"] == 9
    assert "quality" not in alone.summary()


@pytest.mark.parametrize("method", ["compel", "diep"])
def test_gradient_methods_fit_on_scoring_rows_only(method, fixture_model):
    job = prepare(fixture_model, MoEPruneConfig(method, 0.5, calibration=ROWS, eval_fraction=0.25))
    assert torch.equal(job.rows, ROWS[SCORED]) and torch.equal(
        job.eval_rows, ROWS[[3, 7, 11]]
    )  # run passes job.rows to fit


def test_teacher_records_are_the_unpruned_models_log_probs(fixture_model):
    rows = ROWS[:3]
    records = record_teacher(fixture_model, rows, top_k=8, batch_size=2)
    with torch.no_grad():
        log_probs = F.log_softmax(fixture_model(input_ids=rows).logits[:, :-1].float(), dim=-1)
    assert records.top_logprobs.shape == records.top_indices.shape == (3, 31, 8) and records.tokens == 93
    torch.testing.assert_close(records.top_logprobs, log_probs.gather(-1, records.top_indices), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(records.top_logprobs, log_probs.topk(8).values, rtol=1e-5, atol=1e-5)
    assert torch.equal(records.targets, rows[:, 1:]) and torch.equal(records.argmax, log_probs.argmax(-1))
    torch.testing.assert_close(records.target_logprobs, log_probs.gather(-1, rows[:, 1:, None])[..., 0])
    tail = 1 - log_probs.topk(8).values.exp().sum(-1)
    torch.testing.assert_close(records.tail_logprobs().exp(), tail, rtol=1e-4, atol=1e-6)
    first = records.select(0, 2)
    assert torch.equal(first.rows, rows[:2]) and torch.equal(first.top_indices, records.top_indices[:2])


def test_kl_over_the_whole_vocabulary_is_the_exact_kl_and_top_k_a_lower_bound(pruned_pair):
    teacher, student = pruned_pair
    rows = ROWS[:3]
    full = measure(student, record_teacher(teacher, rows, top_k=VOCAB, batch_size=2), batch_size=2)
    with torch.no_grad():
        p = F.log_softmax(teacher(input_ids=rows).logits[:, :-1].double(), dim=-1)
        q = F.log_softmax(student(input_ids=rows).logits[:, :-1].double(), dim=-1)
    exact = float((p.exp() * (p - q)).sum(-1).mean())
    assert full["top_k"] == VOCAB and full["kl"] == pytest.approx(exact, rel=1e-4)
    assert full["top1_agreement"] == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).double().mean()), abs=1e-6)
    targets = rows[:, 1:, None]
    assert full["ppl_before"] == pytest.approx(math.exp(-float(p.gather(-1, targets).mean())), rel=1e-4)
    assert full["ppl_after"] == pytest.approx(math.exp(-float(q.gather(-1, targets).mean())), rel=1e-4)
    for k in (1, 8, 32):
        bounded = measure(student, record_teacher(teacher, rows, top_k=k, batch_size=2), batch_size=2)
        assert 0 < bounded["kl"] <= exact + 1e-5
        assert {key: bounded[key] for key in ("top1_agreement", "ppl_before", "ppl_after", "tokens")} == {
            key: full[key] for key in ("top1_agreement", "ppl_before", "ppl_after", "tokens")
        }


def test_a_model_measured_against_itself_agrees_fully(fixture_model):
    quality = measure(fixture_model, record_teacher(fixture_model, ROWS[:4], batch_size=2), batch_size=2)
    assert quality["kl"] == 0 and quality["top1_agreement"] == 1
    assert quality["ppl_before"] == quality["ppl_after"] > 1


def test_quality_is_in_the_plan_config_card_and_reloads(tmp_path):
    config = MoEPruneConfig("reap", calibration=mixed_texts(), allocation=[8, 6, 8, 8], **SMALL)  # non-uniform
    model, plan = _prune(config)
    quality = plan.quality
    assert quality["mode"] == "full" and quality["rows"] == 1 and quality["top_k"] == 32
    assert 0 < quality["kl"] and 0 < quality["top1_agreement"] < 1 and quality["ppl_after"] > quality["ppl_before"]
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "moe_pruning_plan.json").read_text())
    assert saved["quality"] == quality and PrunePlan.load(tmp_path / "out").quality == quality
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_json["moe_pruning"]["quality"] == quality
    assert config_json["quantization_config"]["eval_fraction"] == 0.1
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Measured on held-out calibration rows" in card and f"{quality['kl']:.4g} nats per token" in card
    assert "come from the calibration data" in card and "1 more rows held out" in card
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.moe_pruning_plan.quality == quality if hasattr(reloaded, "moe_pruning_plan") else True
    # a plan written before the field existed still loads; a damaged block is refused, naming the field
    del saved["quality"]
    (tmp_path / "old.json").write_text(json.dumps(saved))
    assert PrunePlan.load(tmp_path / "old.json").quality is None
    saved["quality"] = {**quality, "top1_agreement": 1.5}
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="quality.top1_agreement"):
        PrunePlan.load(tmp_path / "bad.json")


def test_config_round_trip_and_configs_saved_without_the_key():
    config = MoEPruneConfig("reap", 0.5, eval_fraction=0.25)
    assert MoEPruneConfig(**config.to_dict()) == config and config.to_dict()["eval_fraction"] == 0.25
    old = config.to_dict()
    del old["eval_fraction"]
    assert MoEPruneConfig(**old).eval_fraction == 0.1


def test_too_few_rows_or_no_lm_head_say_why_in_the_plan(fixture_model):
    _, plan = _prune(MoEPruneConfig("reap", 0.5, calibration=ROWS[:1]))
    assert plan.quality == {"skipped": "only 1 calibration row: none can be held out to measure the pruned model"}
    assert plan.calibration["rows"] == 1
    torch.manual_seed(0)
    base = AutoModel.from_config(tiny_config("qwen3_moe")).eval()  # hidden states, no LM head
    rows = torch.randint(1, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    plan = hf_moe_prune.prune(base, MoEPruneConfig("reap", 0.5, calibration=rows), progress=False)
    assert "no next-token logits" in plan.quality["skipped"]
    with pytest.raises(NotALanguageModel):
        record_teacher(base, rows)


def test_random_is_measured_when_calibration_is_given():
    _, plan = _prune(MoEPruneConfig("random", 0.5, calibration=ROWS))
    assert plan.quality["rows"] == 1 and "rows" not in plan.calibration
    _, plan = _prune(MoEPruneConfig("random", 0.5))
    assert plan.quality == {"skipped": "no calibration data to hold rows out of"}


def test_streaming_measures_the_same_as_a_full_load():
    config = MoEPruneConfig("reap", 0.5, calibration=ROWS, eval_fraction=0.25, batch_size=4)
    streamed = stream_prune(fixture_path("qwen3_moe"), config, progress=False).moe_pruning_plan.quality
    _, plan = _prune(config)
    full = plan.quality
    assert streamed["mode"] == "streaming" and full["mode"] == "full" and "layer-by-layer" in streamed["what"]
    for key in ("rows", "seq_len", "tokens", "top_k", "top1_agreement"):
        assert streamed[key] == full[key], key
    for key in ("kl", "ppl_before", "ppl_after"):
        assert streamed[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    # the teacher is the unpruned model whatever the propagation: pruned-prefix calibration leaves it alone
    pruned = stream_prune(fixture_path("qwen3_moe"), config, propagation="pruned", progress=False)
    assert pruned.moe_pruning_plan.quality["ppl_before"] == pytest.approx(full["ppl_before"], rel=1e-4)


def test_quantizer_path_measures_too():
    config = MoEPruneConfig("reap", 0.5, calibration=ROWS, streaming=False)
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=config)
    quality = model.moe_pruning_plan.quality
    assert quality["mode"] == "full" and quality["rows"] == 1 and model.config.moe_pruning["quality"] == quality


def test_cli_report_carries_and_prints_the_held_out_block(tmp_path, capsys):
    args = ["prune", "--num-samples", "8", "--seq-len", "64", "--no-eval", "--quiet", "--eval-fraction", "0.25"]
    assert cli.main([*args, "--output", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    quality = report["held_out_quality"]
    assert quality["rows"] == 2 and quality == PrunePlan.load(tmp_path / "out").quality
    print_report(argparse.Namespace(command="prune"), report)
    out = capsys.readouterr().out
    assert "measured on held-out calibration rows" in out and "nats/token" in out and "top-1 agreement" in out
    assert "% kept)" in out and "pruning time:" in out and " s\n" in out
    assert cli.main(["plan", "show", str(tmp_path / "out")]) == 0
    assert "measured on held-out calibration rows" in capsys.readouterr().out
    parsed = build_parser().parse_args(["prune", "--eval-fraction", "0"])
    assert prune_config(parsed).eval_fraction == 0
    assert prune_config(build_parser().parse_args(["prune"])).eval_fraction == 0.1
