"""Quality of a (pruned) language model: perplexity per domain, and agreement with a reference model.

Works on any causal LM and tokenizer. Texts are packed into rows of `seq_len` tokens exactly as calibration data are
(`hf_moe_prune.calibration.calibration_rows`), so that numbers are comparable across models with the same tokenizer.

    perplexity   = exp(mean over predicted tokens of -log p_model(next token))
    kl           = mean over positions of KL(p_reference || p_model) over the whole vocabulary (nats)
    top1         = fraction of positions where both models' most likely next token agree
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils.logging import is_progress_bar_enabled

from hf_moe_prune.calibration import calibration_rows, model_device
from hf_moe_prune.calibration.runner import model_inputs


@dataclass
class DomainResult:
    """Quality numbers on one domain's evaluation text."""

    tokens: int
    perplexity: float
    kl: float | None = None
    top1_agreement: float | None = None


@dataclass
class EvalResult:
    """Per-domain results and their token-weighted overall."""

    domains: dict[str, DomainResult] = field(default_factory=dict)
    overall: DomainResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_texts(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        from hf_moe_prune.calibration import iter_texts

        return list(iter_texts(source))
    return source


@torch.no_grad()
def _score_rows(model, rows: torch.Tensor, reference, batch_size: int, progress: bool, desc: str) -> DomainResult:
    device = model_device(model)
    nll = kl = agree = 0.0
    count = 0
    for start in tqdm(
        range(0, len(rows), batch_size), desc=desc, unit="batch", disable=not progress or not is_progress_bar_enabled()
    ):
        batch = rows[start : start + batch_size].to(device)
        # Decoder-only: position t predicts token t + 1. Encoder-decoder: the decoder, teacher-forced on the rows
        # shifted right while the encoder reads them, predicts token t at position t (a reconstruction perplexity).
        shift = 0 if getattr(model.config, "is_encoder_decoder", False) else 1
        logits = model(**model_inputs(model, batch), use_cache=False).logits[:, : batch.shape[1] - shift].float()
        targets = batch[:, shift:]
        log_probs = F.log_softmax(logits, dim=-1)
        nll -= log_probs.gather(-1, targets.unsqueeze(-1)).sum().item()
        count += targets.numel()
        if reference is not None:
            ref_batch = batch.to(model_device(reference))
            ref_logits = reference(**model_inputs(reference, ref_batch), use_cache=False).logits
            ref_logits = ref_logits[:, : batch.shape[1] - shift]
            ref_log_probs = F.log_softmax(ref_logits.float().to(log_probs.device), dim=-1)
            kl += (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum().item()
            agree += (ref_log_probs.argmax(-1) == log_probs.argmax(-1)).sum().item()
    return DomainResult(
        tokens=count,
        perplexity=math.exp(nll / count),
        kl=kl / count if reference is not None else None,
        top1_agreement=agree / count if reference is not None else None,
    )


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Mapping[str, Any] | Any,
    reference: torch.nn.Module | None = None,
    seq_len: int = 256,
    max_rows: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Perplexity per domain and overall; with `reference`, also KL divergence and top-1 agreement against it.

    Args:
        model (`PreTrainedModel`): The causal LM (or encoder-decoder model, scored reconstructing its input) to
            evaluate.
        tokenizer: Its tokenizer.
        texts: `{domain: texts}` (each a list of strings, a path, or anything `MoEPruneConfig.calibration` accepts),
            or a single source (domain `"all"`).
        reference (`PreTrainedModel`, *optional*): The model to compare with (usually the unpruned one); must share
            the tokenizer.
        seq_len (`int`, *optional*, defaults to 256): Tokens per row.
        max_rows (`int`, *optional*, defaults to 64): At most this many rows per domain.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
    """
    domains = dict(texts) if isinstance(texts, Mapping) else {"all": texts}
    result = EvalResult()
    for name, source in domains.items():
        rows = calibration_rows(_load_texts(source), tokenizer, max_rows, seq_len)
        result.domains[name] = _score_rows(model, rows, reference, batch_size, progress, f"eval {name}")
    total = sum(d.tokens for d in result.domains.values())

    def weighted(attr: str) -> float | None:
        values = [(getattr(d, attr), d.tokens) for d in result.domains.values()]
        if any(v is None for v, _ in values):
            return None
        return sum(v * n for v, n in values) / total

    log_ppl = sum(math.log(d.perplexity) * d.tokens for d in result.domains.values()) / total
    result.overall = DomainResult(total, math.exp(log_ppl), weighted("kl"), weighted("top1_agreement"))
    return result


def format_markdown(results: Mapping[str, EvalResult]) -> str:
    """A markdown table with one row per model: perplexity per domain and overall, KL and top-1 agreement."""
    names = list(next(iter(results.values())).domains)
    header = "| model | " + " | ".join(f"ppl {n}" for n in names) + " | ppl all | KL | top-1 agree |"
    lines = [header, "|" + "---|" * (len(names) + 4)]
    for label, res in results.items():
        kl = "—" if res.overall.kl is None else f"{res.overall.kl:.4f}"
        agree = "—" if res.overall.top1_agreement is None else f"{res.overall.top1_agreement:.3f}"
        cells = " | ".join(f"{res.domains[n].perplexity:.2f}" for n in names)
        lines.append(f"| {label} | {cells} | {res.overall.perplexity:.2f} | {kl} | {agree} |")
    return "\n".join(lines)
