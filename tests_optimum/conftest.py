import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from .checkpoints import ENV, REFERENCE, build, existing  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Pruned checkpoints with PyTorch references: from `$HF_MOE_PRUNE_OPTIMUM_CHECKPOINTS` (written by the main
    environment, see run.sh), else pruned here, which needs transformers 5."""
    if os.environ.get(ENV):
        return existing(os.environ[ENV])
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.fail(
            f"transformers {transformers.__version__} cannot prune (the library needs 5.x): set {ENV} to a folder "
            "written by `python tests_optimum/checkpoints.py DIR` in a transformers 5 environment (run.sh does)."
        )
    return build(tmp_path_factory.mktemp("optimum_checkpoints"))


def load_reference(path):
    return torch.load(os.path.join(path, REFERENCE), weights_only=False)["rows"]
