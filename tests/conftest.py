import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_moe_prune.testing import SAMPLE_TEXT, TINY_FAMILIES, save_tiny_model, tiny_tokenizer  # noqa: E402

FAMILIES = sorted(TINY_FAMILIES)
CALIBRATION = [SAMPLE_TEXT] * 12


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """A saved tiny checkpoint (weights + tokenizer) per family, like a downloaded Hub model."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {family: save_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture
def input_ids():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, 300, (2, 24), generator=generator)


# Small prunes of the trained qwen3_moe fixture with a quarter of the rows held out (tests of auto and healing).
HELD_OUT = {"num_samples": 12, "seq_len": 64, "batch_size": 4, "eval_fraction": 0.25}


@pytest.fixture(scope="module")
def held_out_fixture():
    """The trained qwen3_moe fixture and `HELD_OUT["num_samples"]` token rows of its mixed-domain text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_moe_prune.testing import fixture_path, mixed_texts

    path = fixture_path("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = AutoTokenizer.from_pretrained(path)("\n\n".join(mixed_texts()[:40]), return_tensors="pt").input_ids[0]
    return model, rows[: HELD_OUT["num_samples"] * HELD_OUT["seq_len"]].view(HELD_OUT["num_samples"], -1)


def pruned_copy(model, **kwargs):
    """Prune a copy of `model` with `HELD_OUT` settings overridden by `kwargs`; return the copy and its plan."""
    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig

    pruned = copy.deepcopy(model)
    plan = hf_moe_prune.prune(pruned, MoEPruneConfig(**{**HELD_OUT, **kwargs}), progress=False)
    return pruned, plan
