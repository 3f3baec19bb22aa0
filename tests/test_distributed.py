"""Data-parallel calibration: a 2-process gloo run (torchrun on CPU) gives exactly the single-process plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_moe_prune.calibration import LayerStats, distributed

from .distributed_worker import METHODS, prune_fixture

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_local_batches_without_a_group_are_all_the_batches():
    assert not distributed.is_distributed()
    assert distributed.local_batches(10, 4) == [0, 4, 8]
    assert distributed.is_main_process()


def test_plan_helpers_are_no_ops_without_a_group():
    plan = object()
    assert distributed.broadcast_plan(plan) is plan
    distributed.check_same_plan(plan)  # nothing to compare with


def test_packing_order_does_not_depend_on_set_order():
    # Statistic names come from sets, whose order differs between processes (string hashing): the packed rows that
    # ranks exchange must not.
    class Observer:
        def __init__(self, order):
            self.block = SimpleNamespace(name="block")
            self.stats = LayerStats(3)
            for name in order:
                self.stats.tensors[name] = torch.zeros(3, dtype=torch.float64)

    names = ["count", "gate_sum", "gate_norm_sum"]
    rows = []
    for order in (names, names[::-1]):
        batch = LayerStats(3)
        for name in order:
            batch.tensors[name] = torch.full((3,), float(names.index(name) + 1), dtype=torch.float64)
        batch.tokens = 7
        rows.append(distributed.BatchSums([Observer(order)], 1)._pack({"block": batch}))
    assert torch.equal(rows[0], rows[1])


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_plan(tmp_path):
    # torchrun as a module of this interpreter: the same environment, whatever is on PATH.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a local rendezvous on a free port, so parallel test runs do not collide
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path),
        str(torch.get_num_threads()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent.parent)}
    env.pop("PYTHONHASHSEED", None)  # ranks hash strings (set orders) differently, as in real launches
    # Its own session, so that a hang is cleaned up with both workers, not only torchrun.
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        single = {method: prune_fixture(method) for method in METHODS}  # meanwhile, in this process
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-5000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["main"] for r in ranks] == [True, False]
    for result in ranks:
        for method in METHODS:
            plan, expected = result["plans"][method], single[method]
            assert {b: p["kept"] for b, p in plan.items()} == {b: p["kept"] for b, p in expected.items()}, method
            # The statistics are bit-identical, not merely close: so are the scores made from them.
            assert plan == expected, method
        assert "not supported across processes" in result["recorder_error"]
