import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

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
