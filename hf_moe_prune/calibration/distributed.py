"""Data-parallel calibration across processes with `torch.distributed` (torchrun / accelerate launch).

When a default process group is initialized with more than one process, `collect_stats` calibrates only this rank's
share of the batches and the ranks then exchange their statistics, so that every rank ends with the statistics of the
whole calibration set and therefore makes the same pruning decision. Nothing here starts processes: launch the script
with `torchrun --nproc_per_node N` (or `accelerate launch`), which also sets the rendezvous environment, and call
`torch.distributed.init_process_group()` (gloo on CPU, NCCL on GPU) before `prune`.

Determinism, in detail:

- **Sharding by whole batches.** The global batches are the single-process ones (`rows[i * batch_size:(i + 1) *
  batch_size]`); rank r runs batches r, r + W, r + 2W, ... (W = world size). Sharding rows instead (`rows[r::W]`)
  would regroup tokens into other batches, and an MoE forward is not batch-invariant: the experts run one grouped
  matmul over the tokens routed to them from the whole batch, whose float rounding can depend on who else is in it.
- **Per-batch sums, added in batch order.** Each batch's statistics are summed from zero (float64) and the totals are
  the batch sums added in global batch order, in one process or in many: after each round of W batches the ranks
  all-gather that round's batch sums and every rank adds them to its total in that order itself. Float addition is
  not associative, so an all-reduce (whose reduction order belongs to the backend) would only be equal up to
  rounding; this way the totals are bit-identical to the single-process ones and identical on every rank, for gloo
  and NCCL alike, and so is every plan made from them (scoring and allocation are deterministic functions of the
  statistics and the seed).
- **Same decision on every rank.** Every rank scores and allocates from the same totals, so with the deterministic
  methods every rank makes the same plan by itself. Steps after calibration that run the model again (a `fit` such
  as DiEP's or COMPEL's, the evolutionary allocation) are deterministic on CPU but may not be on GPU kernels:
  `broadcast_plan` hands every rank rank 0's plan, and `check_same_plan` verifies that the ranks agree.

Not distributed (yet): the block-input recorder used by `allocation="outlier"` and by input-needing compensations
(`"fisher"`) samples inputs per batch with one random stream, which has no exact sharded equivalent; with a process
group it raises, naming the fix. Methods with a `fit` (DiEP, COMPEL) run it on every rank over all the rows: correct,
but not faster.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist

from hf_moe_prune.calibration.stats import LayerStats


def is_distributed() -> bool:
    """Whether calibration is data-parallel: a default process group is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process should write files (save the pruned model, the plan, a report): rank 0, or no group.

    Example:
        ```python
        >>> plan = hf_moe_prune.prune(model, config)
        >>> if is_main_process():
        ...     model.save_pretrained("pruned")
        >>> torch.distributed.barrier()
        ```
    """
    return rank() == 0


def local_batches(num_rows: int, batch_size: int) -> list[int]:
    """Start rows of the batches this rank calibrates: every W-th single-process batch, starting at its rank.

    The union over the ranks is exactly the single-process batches, each with the same rows (see the module
    docstring for why whole batches and not rows are sharded).
    """
    starts = list(range(0, num_rows, batch_size))
    return starts[rank() :: world_size()]


def check_recorders(recorders: tuple) -> None:
    """Raise when block-input recorders are asked for under a process group: their samples are not gathered."""
    if recorders and is_distributed():
        from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS

        users = [f"allocation={a!r}" for a in ALLOCATIONS.names() if not ALLOCATIONS.get(a).distributed]
        users += [f"compensation={c!r}" for c in COMPENSATIONS.names() if not COMPENSATIONS.get(c).distributed]
        raise NotImplementedError(
            f"{', '.join(users)} record block inputs during calibration, which is not supported across processes "
            f"yet (world size {world_size()}). Run this prune in a single process (without torchrun / accelerate "
            "launch, or before init_process_group), or choose another allocation and compensation."
        )


def _device() -> torch.device:
    # NCCL only moves CUDA tensors, each rank's on its own device; gloo (and mpi) move CPU tensors.
    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class BatchSums:
    """Adds up per-batch block statistics in global batch order, across the ranks of a process group if there is one.

    Without a process group each batch is added as it comes. With one, the ranks go in rounds: in round k rank r runs
    global batch k * W + r, and `take` all-gathers the round's batch sums (packed in one float64 row per rank) and
    adds them in batch order, so every rank holds the same running total and memory stays at one row per rank.
    `take` and `result` are collectives: every rank must call them, `result` too when it had fewer batches.

    Args:
        observers (`list[ExpertObserver]`): The observers, before any forward, in the same block order on every rank.
            Their still-zero `stats` are the templates: which statistics, of which shapes (`[E]`, or `[E, width]`
            per neuron) every batch sum has.
        num_batches (`int`): Number of global (single-process) batches.
    """

    def __init__(self, observers: list, num_batches: int):
        # Deep copies: independent of how the observer builds its LayerStats, whatever statistics it holds.
        self.templates = {o.block.name: copy.deepcopy(o.stats).cpu() for o in observers}
        self.num_batches = num_batches
        self.distributed = is_distributed()
        self.totals = {name: copy.deepcopy(t) for name, t in self.templates.items()}
        # Distributed: one row per batch, every statistic of every block flattened, then the block's token count.
        self.width = sum(sum(t.numel() for t in stats.tensors.values()) + 1 for stats in self.templates.values())
        self.rounds = -(-num_batches // world_size())  # the last round is short when W does not divide the batches
        self._round = 0
        self._total = torch.zeros(self.width, dtype=torch.float64)

    def take(self, observers: list) -> None:
        """Move the sums of the batch just run out of `observers` (each summed from zero) and restart them at zero."""
        batch = {}
        for observer in observers:
            batch[observer.block.name] = observer.stats.cpu()
            observer.stats = copy.deepcopy(self.templates[observer.block.name])
        if self.distributed:
            self._gather_round(self._pack(batch))
        else:
            for name, stats in batch.items():
                self.totals[name].merge_(stats)

    def result(self) -> dict[str, LayerStats]:
        """`{block name: LayerStats}` over all the calibration batches, on the CPU (the same on every rank)."""
        if not self.distributed:
            return self.totals
        while self._round < self.rounds:  # this rank had one batch fewer: join the last round with nothing
            self._gather_round(None)
        self._unpack(self._total)
        return self.totals

    def _gather_round(self, row: torch.Tensor | None) -> None:
        world, device = world_size(), _device()
        local = torch.zeros(self.width, dtype=torch.float64, device=device) if row is None else row.to(device)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        for other, value in enumerate(gathered):
            if self._round * world + other < self.num_batches:  # batch k * W + r, in batch order
                self._total = self._total + value.cpu()
        self._round += 1

    def _pack(self, batch: dict[str, LayerStats]) -> torch.Tensor:
        # Blocks in model order, statistics by name: the same on every rank. Token counts ride along as float64:
        # exact below 2**53 tokens.
        parts = []
        for name, template in self.templates.items():
            stats = batch[name]
            extra = set(stats.tensors) - set(template.tensors)
            if extra:
                raise RuntimeError(f"{name}: statistics {sorted(extra)} appeared after the first forward")
            for statistic in sorted(template.tensors):  # sorted: set order differs between processes (str hashes)
                value = stats.tensors.get(statistic, template.tensors[statistic])
                parts.append(value.detach().to("cpu", torch.float64).reshape(-1))
            parts.append(torch.tensor([float(stats.tokens)], dtype=torch.float64))
        return torch.cat(parts)

    def _unpack(self, flat: torch.Tensor) -> None:
        offset = 0
        for name, template in self.templates.items():
            stats = self.totals[name] = copy.deepcopy(template)
            for statistic in sorted(template.tensors):
                zero = template.tensors[statistic]
                stats.tensors[statistic] = flat[offset : offset + zero.numel()].reshape(zero.shape).clone()
                offset += zero.numel()
            stats.tokens = int(flat[offset].item())
            offset += 1


def broadcast_plan(plan):
    """Return rank 0's plan on every rank (the plan itself without a process group).

    Every rank already decides from the same statistics; this makes rank 0's decision authoritative where a step
    after calibration may still differ between ranks (a method's `fit`, the evolutionary allocation, on
    non-deterministic GPU kernels). Call it on every rank, before the plan is applied.

    Args:
        plan (`PrunePlan`): This rank's plan.

    Returns:
        `PrunePlan`: rank 0's plan.
    """
    if not is_distributed():
        return plan
    holder = [plan if rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0, device=_device())
    return holder[0]


def check_same_plan(plan) -> None:
    """Raise on every rank unless all the ranks kept the same experts (and neurons) in every block.

    A no-op without a process group; a collective with one (call it on every rank).

    Args:
        plan (`PrunePlan`): This rank's plan, as returned by `prune`.
    """
    if not is_distributed():
        return
    mine = {b.name: ([int(e) for e in b.kept], getattr(b, "neurons", None)) for b in plan.blocks}
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    for other, kept in enumerate(everyone):
        blocks = [name for name in everyone[0] if kept.get(name) != everyone[0][name]]
        if blocks:
            raise RuntimeError(
                f"rank {other} kept other experts than rank 0 in {blocks[0]} ({kept.get(blocks[0])} instead of "
                f"{everyone[0][blocks[0]]}) and {len(blocks) - 1} more blocks; the plans must agree."
            )


def local_rank_device() -> torch.device:
    """The device a torchrun / accelerate rank should put its model on: `cuda:LOCAL_RANK` with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
