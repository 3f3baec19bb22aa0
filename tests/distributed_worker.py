"""One rank of the data-parallel calibration test, run by `tests/test_distributed.py` under torchrun (2 ranks, gloo).

Prunes the trained qwen3_moe fixture with each method of `METHODS` on a gloo process group and writes this rank's
plans to `OUT/rank{R}.json`. `tests/test_distributed.py` compares them with the single-process plans, made by
`prune_fixture` in the test process itself.
"""

from __future__ import annotations

import json
import os
import sys

import torch

METHODS = ("reap", "frequency")
NUM_SAMPLES, SEQ_LEN, BATCH_SIZE = 10, 64, 2  # 5 batches: ranks get 3 and 2, so the uneven share is covered too


def prune_fixture(method: str) -> dict:
    """Prune a fresh copy of the fixture at 0.5 with `method`; return `{block: {"kept": [...], "scores": [...]}}`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from hf_moe_prune.testing import fixture_path, fixture_texts

    path = fixture_path("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(path)
    config = MoEPruneConfig(
        method=method,
        ratio=0.5,
        calibration=fixture_texts("code"),
        num_samples=NUM_SAMPLES,
        seq_len=SEQ_LEN,
        batch_size=BATCH_SIZE,
    )
    plan = hf_moe_prune.prune(model, config, tokenizer=AutoTokenizer.from_pretrained(path), progress=False)
    hf_moe_prune.calibration.distributed.check_same_plan(plan)
    return {b.name: {"kept": [int(e) for e in b.kept], "scores": list(b.scores)} for b in plan.blocks}


def main(out: str, threads: int) -> None:
    import torch.distributed as dist

    from hf_moe_prune import MoEPruneConfig
    from hf_moe_prune.calibration import distributed

    torch.set_num_threads(threads)  # the test process's count, so the float32 forwards round the same way
    dist.init_process_group("gloo")
    try:
        result = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "plans": {}}
        for method in METHODS:
            result["plans"][method] = prune_fixture(method)
        # Block-input recorders are not gathered across processes: a clear error, on every rank, before any forward.
        import hf_moe_prune
        from hf_moe_prune.testing import tiny_model

        rows = torch.randint(1, 100, (4, 16), generator=torch.Generator().manual_seed(0))
        config = MoEPruneConfig(method="reap", ratio=0.5, allocation="outlier", calibration=rows)
        try:
            hf_moe_prune.prune(tiny_model("qwen3_moe"), config, progress=False)
            result["recorder_error"] = None
        except NotImplementedError as error:
            result["recorder_error"] = str(error)
        result["main"] = distributed.is_main_process()
        with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
