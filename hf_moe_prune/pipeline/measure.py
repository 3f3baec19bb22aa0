"""Self-measurement: the pruned model against the unpruned one on calibration rows held out from scoring.

`hold_out` splits the calibration rows (an evenly spaced `eval_fraction` of them are never scored), the unpruned
model's targets on them are recorded before the model changes (`hf_moe_prune.calibration.teacher.record_teacher`), and
`measure` runs the pruned model on the same rows:

    kl               mean over positions of KL(teacher || pruned) over the teacher's top-k tokens plus one tail bucket
                     (all other tokens), in nats
    top1_agreement   share of positions where both models' most likely next token (over the whole vocabulary) agree
    ppl_before/after perplexity of the unpruned / pruned model: exp(mean −log p(next token))

The top-k + tail KL merges the tokens outside the teacher's top-k into one outcome; by the data-processing inequality
this can only lower a KL divergence, so it is a lower bound of the full-vocabulary KL, exact when the top-k carries all
of the teacher's and the student's mass (k = vocabulary size gives the full KL). The held-out rows come from the
calibration distribution, so the numbers say how much the pruning changed the model there, not on other data.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.utils.logging import is_progress_bar_enabled

from hf_moe_prune.calibration.teacher import TeacherRecords, log1mexp, next_token_logits, row_logprobs

logger = logging.getLogger(__name__)

# What each mode measured (`PrunePlan.quality["mode"]` / `["what"]`).
FULL_LOAD = {"mode": "full", "what": "the unpruned model and the pruned model each ran whole on the held-out rows"}
STREAMING = {
    "mode": "streaming",
    "what": "the unpruned model's targets came from the layer-by-layer pass (the held-out rows carried through each "
    "unpruned layer, unseen by the statistics, then the final norm and LM head); the pruned model ran whole after "
    "loading",
}

# Tail masses below float32's resolution are not resolved by float32 log-probs: both tails are floored there.
_TAIL_FLOOR = math.log(torch.finfo(torch.float32).eps)


def hold_out(rows: torch.Tensor, eval_fraction: float) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
    """Split calibration rows into scoring rows and held-out rows: `max(1, round(eval_fraction × rows))` rows evenly
    spaced through the data (the last of every `1 / eval_fraction`), so that held-out rows sample every part of a
    calibration set packed in order (domains one after another), not only its tail.

    Returns:
        `(scoring, held_out, reason)`: `held_out` is None when nothing is held out, with `reason` saying why (None
        when `eval_fraction` is 0, measurement being off). At least one scoring row always remains.
    """
    if not eval_fraction:
        return rows, None, None
    if len(rows) < 2:
        return rows, None, f"only {len(rows)} calibration row: none can be held out to measure the pruned model"
    count = min(max(1, round(eval_fraction * len(rows))), len(rows) - 1)
    step = len(rows) / count
    held = {min(len(rows) - 1, int((i + 1) * step) - 1) for i in range(count)}
    # explicit devices: the quantizer prepares under a meta default device, where data-dependent indexing fails
    scoring = torch.tensor([i for i in range(len(rows)) if i not in held], device=rows.device)
    return rows[scoring], rows[torch.tensor(sorted(held), device=rows.device)], None


def _kl_per_position(teacher: TeacherRecords, student_top: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k plus one tail bucket, per position (float64)."""
    p_top = teacher.top_logprobs.to(student_top.device).double()
    q_top = student_top.double()
    kl = (p_top.exp() * (p_top - q_top)).sum(-1)
    if teacher.top_k < teacher.vocab_size:
        log_p_tail = log1mexp(torch.logsumexp(p_top, dim=-1))
        log_q_tail = log1mexp(torch.logsumexp(q_top, dim=-1))
        ratio = log_p_tail.clamp(min=_TAIL_FLOOR) - log_q_tail.clamp(min=_TAIL_FLOOR)
        kl = kl + torch.where(log_p_tail > -math.inf, log_p_tail.exp() * ratio, torch.zeros_like(kl))
    return kl


def _finite(value: float) -> float | None:
    """`value` to 7 significant digits, or None when it is NaN or infinite (not JSON; NaN weights give those)."""
    return float(f"{value:.7g}") if math.isfinite(value) else None


@torch.no_grad()
def measure(
    model: torch.nn.Module, teacher: TeacherRecords, batch_size: int = 8, progress: bool = False
) -> dict[str, Any]:
    """Compare `model` (the pruned student) with the teacher records on the teacher's rows.

    Args:
        model (`PreTrainedModel`): The pruned model; run in eval mode, without gradients.
        teacher (`TeacherRecords`): The unpruned model's records (`record_teacher`) on the held-out rows.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward (use the teacher's, for identical batches).
        progress (`bool`, *optional*, defaults to `False`): Show a progress bar.

    Returns:
        `dict`: `kl` (nats per token; a lower bound of the full-vocabulary KL, see the module docstring),
        `top1_agreement`, `ppl_before` (teacher), `ppl_after` (student), `rows`, `seq_len`, `tokens`, `top_k`. A
        value that is not finite (NaN weights) is None.
    """
    if not teacher.tokens:
        return {"skipped": "the held-out rows have no next token to predict (rows of one token)"}
    kl = nll = 0.0
    agree = 0
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(teacher.rows), batch_size)
        disabled = not progress or not is_progress_bar_enabled()
        for start in tqdm(starts, desc="pruned model (held-out rows)", unit="batch", disable=disabled):
            batch = teacher.select(start, start + batch_size)
            logits = next_token_logits(model, batch.rows)
            for row in range(len(logits)):  # one float32 row of log-probs at a time
                one = batch.select(row, row + 1)
                log_q = row_logprobs(logits[row : row + 1])
                kl += float(_kl_per_position(one, log_q.gather(-1, one.top_indices.to(log_q.device))).sum())
                agree += int((log_q.argmax(-1).cpu() == one.argmax).sum())
                nll -= float(log_q.gather(-1, one.targets.to(log_q.device)[..., None]).double().sum())
    finally:
        model.train(was_training)
    tokens = teacher.tokens
    return {
        "kl": _finite(0.0 if kl < 0 else kl / tokens),  # below 0 only by float rounding (models nearly equal)
        "top1_agreement": _finite(agree / tokens),
        "ppl_before": _finite(teacher.perplexity()),
        "ppl_after": _finite(math.exp(nll / tokens) if nll / tokens < 700 else math.inf),
        "rows": len(teacher.rows),
        "seq_len": int(teacher.rows.shape[1]),
        "tokens": tokens,
        "top_k": teacher.top_k,
    }


def log_quality(quality: dict[str, Any] | None) -> None:
    """One INFO line with the held-out numbers (or why there are none)."""
    if quality and "skipped" in quality:
        logger.info("Held-out measurement skipped: %s.", quality["skipped"])
    elif quality:
        logger.info("Held-out calibration rows: %s", "; ".join(quality_lines(quality)))


def _formatted(quality: dict[str, Any]) -> dict[str, str]:
    """The numbers of a quality block as text ("n/a" for a missing or non-finite one)."""
    specs = {"kl": ".4g", "top1_agreement": ".1%", "ppl_before": ".3f", "ppl_after": ".3f", "tokens": ","}
    out = {key: "n/a" if quality.get(key) is None else format(quality[key], spec) for key, spec in specs.items()}
    return {**out, **{key: str(quality.get(key, "?")) for key in ("rows", "seq_len", "top_k")}}


def quality_lines(quality: dict[str, Any]) -> list[str]:
    """The held-out numbers as short labelled lines (CLI report, log); `quality` is `PrunePlan.quality`."""
    if "skipped" in quality:
        return [f"not measured: {quality['skipped']}"]
    q = _formatted(quality)
    return [
        f"KL(unpruned || pruned) {q['kl']} nats/token (top-{q['top_k']} + tail: a lower bound)",
        f"top-1 agreement {q['top1_agreement']}",
        f"perplexity {q['ppl_before']} unpruned -> {q['ppl_after']} pruned",
        f"{q['rows']} rows, {q['tokens']} tokens scored ({quality.get('mode', 'full')} mode)",
    ]


def quality_markdown(quality: dict[str, Any] | None) -> str | None:
    """The model card's "Measured on held-out calibration rows" block, or None without a measurement."""
    if not quality:
        return None
    if "skipped" in quality:
        return f"Not measured: {quality['skipped']}."
    q = _formatted(quality)
    return "\n".join(
        [
            "| | unpruned | pruned |",
            "|---|---:|---:|",
            f"| perplexity | {q['ppl_before']} | {q['ppl_after']} |",
            "",
            f"- KL(unpruned ‖ pruned): {q['kl']} nats per token (over the unpruned model's top-{q['top_k']} tokens "
            "plus one bucket for the rest: a lower bound of the full-vocabulary KL)",
            f"- Top-1 agreement: {q['top1_agreement']} of positions",
            f"- Held-out rows: {q['rows']} × {q['seq_len']} tokens ({q['tokens']} predicted tokens), never used to "
            f"choose the experts; {quality.get('what', FULL_LOAD['what'])}.",
            "",
            "These rows come from the calibration data, so the numbers show how much pruning changed the model on "
            "that distribution; they are no substitute for an evaluation on other data.",
        ]
    )
