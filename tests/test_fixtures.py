"""Quality relations on the trained fixtures (real, non-random MoE models); margins are the measured ones, with slack.

Measured with these settings (calibration 32 rows × 256 tokens, evaluation 16 rows × 256 per domain, seed 0) on
the 16-expert fixtures: perplexity relative to the full model at ratio 0.25: reap 1.09 / 1.09 (qwen3_moe /
qwen2_moe); at ratio 0.5 reap and ean reach 0.67–0.79 of random's perplexity. On `olmoe` (32 small experts, top-4)
ean at 0.5 reaches 0.91 of random's, and on `deepseek_v3` (a shared expert and a dense first layer carry most of the
model: removing half of the routed experts at random costs only about +10%) reap and ean at 0.5 are 0.95 of random's:
there the relation is held as "better than random" only. The usage-only criteria (frequency, soft_count) are no
better than random on the load-balanced 16-expert models (see benchmarks/RESULTS.md), so they are held only to the
calibration-domain relation.
"""

import copy

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.pipeline.evaluation import evaluate
from hf_moe_prune.testing import DOMAINS, FIXTURES, fixture_path, fixture_texts, mixed_texts

OUTPUT_AWARE = ["reap", "ean"]
# frequency is left out: on qwen3_moe, calibrating it on prose gives worse prose perplexity (89.9) than calibrating it
# on code (81.5); raw token counts of a load-balanced router carry little domain signal.
CALIBRATED = ["reap", "ean", "soft_count"]


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    path = fixture_path(request.param)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    cache = {}

    def perplexity(method=None, ratio=None, calibration="mixed"):
        key = (method, ratio, calibration)
        if key not in cache:
            pruned = model
            if method is not None:
                pruned = copy.deepcopy(model)
                data = {"mixed": mixed_texts, "none": lambda: None}.get(
                    calibration, lambda: fixture_texts(calibration)
                )()
                # every row scored: the margins were measured with 32 calibration rows
                config = MoEPruneConfig(method, ratio, calibration=data, num_samples=32, seq_len=256, eval_fraction=0)
                hf_moe_prune.prune(pruned, config, tokenizer=tokenizer, progress=False)
            result = evaluate(pruned, tokenizer, texts, seq_len=256, max_rows=16, progress=False)
            cache[key] = {"all": result.overall.perplexity, **{d: result.domains[d].perplexity for d in DOMAINS}}
        return cache[key]

    perplexity.name = request.param
    return perplexity


def test_fixture_is_a_real_language_model(fixture):
    full = fixture()
    assert full["code"] < 60 and full["prose"] < 100  # unigram perplexity is 510 / 734


# `ean` is the sum over routed tokens since 2026-11-30 (the literature's EAN); on qwen2_moe (shared expert) the sum
# loses more than the old mean did: 1.26x the full model at 0.25 and 0.88x random's perplexity at 0.5 (measured).
QUARTER_MARGIN = {("qwen2_moe", "ean"): 1.32}
HALF_EXCEPTION = {("qwen2_moe", "ean"): 0.92}


@pytest.mark.parametrize("method", OUTPUT_AWARE)
def test_quarter_pruning_stays_close_to_the_full_model(fixture, method):
    assert fixture(method, 0.25)["all"] < QUARTER_MARGIN.get((fixture.name, method), 1.20) * fixture()["all"]


# ppl(method, 0.5) < margin × ppl(random, 0.5), per fixture (see the module docstring for why they differ)
HALF_MARGIN = {"qwen3_moe": 0.85, "qwen2_moe": 0.85, "olmoe": 0.95, "deepseek_v3": 1.0}


@pytest.mark.parametrize("method", OUTPUT_AWARE)
def test_half_pruning_is_far_better_than_random(fixture, method):
    margin = HALF_EXCEPTION.get((fixture.name, method), HALF_MARGIN[fixture.name])
    assert fixture(method, 0.5)["all"] < margin * fixture("random", 0.5, "none")["all"]


def test_reap_beats_usage_only_criteria(fixture):
    for method in ("frequency", "soft_count", "random"):
        assert fixture("reap", 0.25)["all"] < fixture(method, 0.25, "none" if method == "random" else "mixed")["all"]


@pytest.mark.parametrize("method", CALIBRATED)
def test_calibrating_on_a_domain_keeps_that_domain_better(fixture, method):
    code, prose = fixture(method, 0.25, "code"), fixture(method, 0.25, "prose")
    assert code["code"] < prose["code"]
    assert prose["prose"] < code["prose"]
