"""Data-parallel calibration: N processes each calibrate on 1/N of the batches; every rank gets the same plan.

torchrun --nproc_per_node 2 examples/distributed_calibration.py                # CPU (gloo), bundled trained fixture
torchrun --nproc_per_node 8 examples/distributed_calibration.py --model PATH_OR_ID --calibration data.txt \
    --output pruned                                                            # one GPU per rank (NCCL)
accelerate launch --num_processes 8 examples/distributed_calibration.py --model PATH_OR_ID --output pruned

Every rank loads the whole model (data parallelism, not model parallelism) and calls `prune` with the same config
and data. Calibration runs every N-th batch on each rank and the ranks exchange their per-batch statistics, so the
plan is exactly the single-process one (see `hf_moe_prune.calibration.distributed`). Only rank 0 writes files.
Not across processes (yet): allocation="outlier" and compensation="fisher" (COMPEL's defaults) raise; DiEP and COMPEL
run their fit on every rank over all the data.
"""

import argparse

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.calibration.distributed import check_same_plan, is_main_process, local_rank_device
from hf_moe_prune.testing import fixture_path, mixed_texts

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=fixture_path("qwen3_moe"))
parser.add_argument("--calibration", default=None, help="text file, folder or dataset (default: the fixture's texts)")
parser.add_argument("--method", default="reap")
parser.add_argument("--ratio", type=float, default=0.5)
parser.add_argument("--num-samples", type=int, default=64)
parser.add_argument("--seq-len", type=int, default=256)
parser.add_argument("--output", default=None, help="where rank 0 saves the pruned model")
args = parser.parse_args()

# torchrun / accelerate launch set RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; NCCL needs each rank on
# its own GPU, selected before the group is created.
device = local_rank_device()
if device.type == "cuda":
    torch.cuda.set_device(device)
dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto").to(device)
config = MoEPruneConfig(
    method=args.method,
    ratio=args.ratio,
    calibration=args.calibration or mixed_texts(),
    num_samples=args.num_samples,
    seq_len=args.seq_len,
)
plan = hf_moe_prune.prune(model, config, tokenizer=tokenizer)  # every rank, same arguments: it is a collective
check_same_plan(plan)  # cheap insurance: raises on every rank if any rank kept other experts

if is_main_process():
    print(f"{dist.get_world_size()} ranks, calibration {plan.stats_seconds} s")
    print({b.name: b.kept for b in plan.blocks})
    if args.output:
        model.save_pretrained(args.output)
        tokenizer.save_pretrained(args.output)
        print(f"saved to {args.output}")
dist.barrier()  # the other ranks wait for rank 0's files before they exit
dist.destroy_process_group()
