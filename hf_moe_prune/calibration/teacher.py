"""Teacher targets: what the unpruned model predicts on held-out rows, kept in tokens × k memory.

For every predicted position of every row, `TeacherRecords` keeps the teacher's `k` most likely next tokens (their
log-probabilities, sorted most likely first, and their token ids), the log-probability of the token that really
follows, and the argmax over the whole vocabulary. The full distribution (tokens × vocabulary floats: 2.6 GB for 128
rows of 512 tokens and a 10k vocabulary) is never stored; the mass outside the top-k is one tail bucket
(`tail_logprobs`).

Positions follow `hf_moe_prune.pipeline.evaluation`: a decoder-only model's position t predicts token t + 1 (`shift`
1: `seq_len - 1` positions per row); an encoder-decoder model, teacher-forced on the row shifted right, predicts token
t at position t (`shift` 0).

`hf_moe_prune.pipeline.measure` compares a pruned model with these records (KL, top-1 agreement, perplexity); they
are also meant as distillation targets (a student's log-probs at `top_indices`, plus its tail, against
`top_logprobs`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils.logging import is_progress_bar_enabled

from hf_moe_prune.adapters import text_config
from hf_moe_prune.calibration.runner import model_device, model_inputs

DEFAULT_TOP_K = 32


class NotALanguageModel(ValueError):
    """The model gives no next-token logits over its vocabulary (a base model, a token classifier): nothing to
    record or measure."""


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """`log(1 - exp(x))` for `x <= 0`, accurate near 0 and for very negative `x` (−inf at 0)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def shift_of(model: torch.nn.Module) -> int:
    """1 when position t predicts token t + 1 (decoder-only), 0 for teacher-forced encoder-decoder models."""
    return 0 if getattr(model.config, "is_encoder_decoder", False) else 1


@torch.no_grad()
def next_token_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """`[B, positions, vocab]` next-token logits of `model` on the token rows `ids` (in the model's dtype; turn them
    into float32 log-probs a row at a time with `row_logprobs`, which keeps the peak at one float32 row).

    Raises:
        `NotALanguageModel`: the model's output has no logits over its vocabulary.
    """
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    output = model(**model_inputs(model, ids.to(model_device(model))), **extra)
    return logits_of(model, getattr(output, "logits", None), ids)


def logits_of(model: torch.nn.Module, logits: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """`next_token_logits` from a forward's logits already computed (e.g. by streaming's layer-by-layer pass)."""
    vocab = getattr(text_config(model.config), "vocab_size", None)
    if logits is None or logits.dim() != 3 or logits.shape[1] != ids.shape[1] or logits.shape[-1] != vocab:
        raise NotALanguageModel(
            f"{type(model).__name__} gives no next-token logits over its {vocab}-token vocabulary (a base model or a "
            "classifier head), so the pruned model cannot be compared with the unpruned one."
        )
    return logits[:, : ids.shape[1] - shift_of(model)]


def row_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-probabilities of one row's (or a batch's) logits over the last axis."""
    return F.log_softmax(logits.float(), dim=-1)


@dataclass
class TeacherRecords:
    """The unpruned model's next-token targets on held-out rows (see the module docstring).

    Args:
        rows (`torch.LongTensor` of shape `[N, seq_len]`): The held-out token rows.
        top_logprobs (`torch.FloatTensor` of shape `[N, P, k]`): The teacher's `k` largest next-token log-probs per
            position (P = `seq_len - shift` positions), most likely first.
        top_indices (`torch.LongTensor` of shape `[N, P, k]`): Their token ids.
        target_logprobs (`torch.FloatTensor` of shape `[N, P]`): Log-prob of the token that really follows.
        argmax (`torch.LongTensor` of shape `[N, P]`): The teacher's most likely token over the whole vocabulary.
        shift (`int`): 1 when position t predicts token t + 1 (decoder-only), 0 for encoder-decoder models.
        vocab_size (`int`): Size of the vocabulary the log-probs are over.
    """

    rows: torch.Tensor
    top_logprobs: torch.Tensor
    top_indices: torch.Tensor
    target_logprobs: torch.Tensor
    argmax: torch.Tensor
    shift: int
    vocab_size: int

    @property
    def top_k(self) -> int:
        return int(self.top_indices.shape[-1])

    @property
    def tokens(self) -> int:
        """Number of predicted positions (tokens scored)."""
        return int(self.target_logprobs.numel())

    @property
    def targets(self) -> torch.Tensor:
        """`[N, P]` the tokens each position predicts."""
        return self.rows[:, self.shift :]

    def tail_logprobs(self) -> torch.Tensor:
        """`[N, P]` log of the teacher's probability mass outside its top-k (−inf when k covers the vocabulary)."""
        if self.top_k >= self.vocab_size:
            return torch.full_like(self.target_logprobs, -math.inf)
        return log1mexp(torch.logsumexp(self.top_logprobs, dim=-1))

    def perplexity(self) -> float:
        """The teacher's perplexity on the rows: exp(mean −log p(next token)); inf past float range."""
        nll = -float(self.target_logprobs.double().mean())
        return math.exp(nll) if nll < 700 else math.inf

    def select_rows(self, index: torch.Tensor) -> TeacherRecords:
        """The records of the rows at `index` (e.g. a shuffled training batch)."""
        columns = (self.rows, self.top_logprobs, self.top_indices, self.target_logprobs, self.argmax)
        return TeacherRecords(*(column[index] for column in columns), self.shift, self.vocab_size)

    def select(self, start: int, end: int) -> TeacherRecords:
        """The records of rows `start:end` (e.g. one batch)."""
        pick = slice(start, end)
        return TeacherRecords(
            self.rows[pick],
            self.top_logprobs[pick],
            self.top_indices[pick],
            self.target_logprobs[pick],
            self.argmax[pick],
            self.shift,
            self.vocab_size,
        )


class TeacherRecorder:
    """Builds `TeacherRecords` batch by batch from full logits (`add`), keeping only tokens × k numbers of them."""

    def __init__(self, top_k: int = DEFAULT_TOP_K, shift: int = 1):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        self.top_k, self.shift = top_k, shift
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.vocab_size = 0

    def add(self, logits: torch.Tensor, ids: torch.Tensor) -> None:
        """Record one batch: `logits` `[B, P, vocab]` (`next_token_logits`) of the token rows `ids` `[B, T]`."""
        self.vocab_size = logits.shape[-1]
        for row, row_ids in zip(logits, ids.cpu(), strict=True):  # one float32 row of log-probs at a time
            log_probs = row_logprobs(row)
            top = log_probs.topk(min(self.top_k, self.vocab_size), dim=-1)
            target = log_probs.gather(-1, row_ids[self.shift :, None].to(log_probs.device))[:, 0]
            columns = (row_ids, top.values, top.indices, target, log_probs.argmax(-1))
            self.parts.append(tuple(column.cpu()[None] for column in columns))

    def result(self) -> TeacherRecords:
        rows, values, indices, target, argmax = (torch.cat(list(column)) for column in zip(*self.parts, strict=True))
        return TeacherRecords(rows, values, indices, target, argmax, self.shift, self.vocab_size)


@torch.no_grad()
def record_teacher(
    model: torch.nn.Module,
    rows: torch.Tensor,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 8,
    progress: bool = False,
) -> TeacherRecords:
    """Run `model` (the unpruned teacher, unchanged) on `rows` and record its next-token targets.

    Args:
        model (`PreTrainedModel`): A causal LM (or encoder-decoder LM); run in eval mode, without gradients.
        rows (`torch.LongTensor` of shape `[N, seq_len]`): Token rows, e.g. the held-out calibration rows.
        top_k (`int`, *optional*, defaults to 32): Log-probs kept per position (memory N × P × k, not × vocabulary);
            capped at the vocabulary size, where the records hold the whole distribution.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward. Measure a student with the same batches to
            compare bit-identical computations.
        progress (`bool`, *optional*, defaults to `False`): Show a progress bar.

    Returns:
        `TeacherRecords`

    Raises:
        `NotALanguageModel`: the model gives no next-token logits over its vocabulary.
    """
    recorder = TeacherRecorder(top_k, shift_of(model))
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(rows), batch_size)
        disabled = not progress or not is_progress_bar_enabled()
        for start in tqdm(starts, desc="teacher (held-out rows)", unit="batch", disable=disabled):
            batch = rows[start : start + batch_size]
            recorder.add(next_token_logits(model, batch), batch)
    finally:
        model.train(was_training)
    return recorder.result()
