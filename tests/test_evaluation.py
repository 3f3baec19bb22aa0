import copy
import math

import pytest

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.calibration import calibration_rows
from hf_moe_prune.pipeline.evaluation import evaluate, format_markdown
from hf_moe_prune.testing import SAMPLE_TEXT, tiny_model

TEXTS = {"a": [SAMPLE_TEXT] * 6, "b": [SAMPLE_TEXT[::-1]] * 6}


def test_perplexity_matches_the_model_loss(tokenizer):
    model = tiny_model("qwen3_moe")
    result = evaluate(model, tokenizer, TEXTS["a"], seq_len=32, max_rows=4, progress=False)
    rows = calibration_rows(TEXTS["a"], tokenizer, 4, 32)  # the rows evaluate() packs and samples
    loss = model(input_ids=rows, labels=rows).loss.item()
    assert result.domains["all"].tokens == 4 * 31
    assert result.overall.perplexity == pytest.approx(math.exp(loss), rel=1e-4)


def test_reference_against_itself_is_perfect_and_pruning_is_not(tokenizer):
    model = tiny_model("qwen2_moe")
    same = evaluate(model, tokenizer, TEXTS, reference=model, seq_len=32, max_rows=2, progress=False)
    assert same.overall.kl == pytest.approx(0.0, abs=1e-6) and same.overall.top1_agreement == 1.0
    pruned = copy.deepcopy(model)
    hf_moe_prune.prune(pruned, MoEPruneConfig("random", 0.5), progress=False)
    worse = evaluate(pruned, tokenizer, TEXTS, reference=model, seq_len=32, max_rows=2, progress=False)
    assert worse.overall.kl > 1e-7 and worse.overall.top1_agreement < 1.0  # a random tiny model is near-uniform
    assert set(worse.domains) == {"a", "b"}
    table = format_markdown({"full": same, "pruned": worse})
    assert "| full |" in table and "ppl a" in table and "ppl b" in table
