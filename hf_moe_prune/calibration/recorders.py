"""Recorders: samples of what enters each MoE block during the calibration pass, for the stages that need more than
sums (input-needing compensations, the `outlier` allocation)."""

from __future__ import annotations

import torch


class BlockInputRecorder:
    """Samples at most `max_tokens` calibration inputs `[tokens, hidden]` of every block, and the L2 norm of each input
    channel over all calibration tokens (used by the `outlier` allocation), from the forwards it is attached to: the
    calibration runner attaches it beside the observers, so no second pass over the data is needed."""

    def __init__(self, blocks, num_rows: int, batch_size: int, max_tokens: int = 8192, seed: int = 0):
        self.blocks = blocks
        self.max_tokens = max_tokens
        self.per_batch = max(1, max_tokens // max(1, (num_rows + batch_size - 1) // batch_size))
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs: dict[str, list[torch.Tensor]] = {b.name: [] for b in blocks}
        self.squares: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            self.squares[name] = self.squares.get(name, 0) + x.float().pow(2).sum(0).cpu()
            pick = torch.randperm(len(x), generator=self.generator)[: self.per_batch]
            self.inputs[name].append(x[pick.to(x.device)].cpu())

        return hook

    def attach(self) -> None:
        self._handles = [b.module.register_forward_pre_hook(self._hook(b.name)) for b in self.blocks]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def result(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`(inputs, input_norms)` per block name."""
        inputs = {n: torch.cat(v)[: self.max_tokens] for n, v in self.inputs.items()}
        return inputs, {n: v.sqrt() for n, v in self.squares.items()}


class TeacherHook:
    """Records the unpruned model's next-token targets (`TeacherRecords`: top-k log-probs, tokens × k memory) from
    the calibration forwards it is attached to, for healing: the teacher costs no extra pass. The runner keeps the LM
    head on (`needs_logits`) while it is attached."""

    needs_logits = True

    def __init__(self, model, top_k: int):
        from hf_moe_prune.calibration.teacher import TeacherRecorder, shift_of

        self.model = model
        self.recorder = TeacherRecorder(top_k, shift_of(model))
        self._handle = None

    def _hook(self, module, args, kwargs, output):
        from hf_moe_prune.calibration.teacher import logits_of

        # the calibration rows (`model_inputs`): an encoder-decoder decoder reads them shifted right, same targets
        rows = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.recorder.add(logits_of(self.model, getattr(output, "logits", None), rows), rows)

    def attach(self) -> None:
        self._handle = self.model.register_forward_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None

    def result(self):
        """The `TeacherRecords` of every row seen, in order."""
        return self.recorder.result()
