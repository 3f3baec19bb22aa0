"""Calibration data: any supported source → a `[rows, seq_len]` tensor of packed token ids."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

_TEXT_SUFFIXES = (".txt", ".md", ".py", ".text")
_SOURCES = (
    "a list of strings, a datasets.Dataset, a .txt/.jsonl path or folder, a tensor of token ids, or a dataset name"
)

logger = logging.getLogger(__name__)


def describe(source: Any) -> str:
    """A short human-readable description of a calibration source (for the plan and the model card)."""
    if source is None:
        return "none"
    if isinstance(source, torch.Tensor):
        return f"token ids {tuple(source.shape)}"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (list, tuple)):
        return f"{len(source)} texts"
    return type(source).__name__


def _texts_from_path(path: Path) -> Iterator[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*_TEXT_SUFFIXES, ".jsonl"))
        if not files:
            raise ValueError(f"Calibration folder {path} holds no .txt or .jsonl files.")
        for file in files:
            yield from _texts_from_path(file)
    elif path.suffix == ".jsonl":
        with open(path, "rb") as f:  # bytes, decoded per line, so that a bad byte is reported at its own line
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}:{line_no}: not UTF-8 text ({error.reason}).") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}:{line_no}: not a JSON line ({error.msg} at column {error.colno}); each line must be "
                        'an object like {"text": "..."}.'
                    ) from None
                text = record.get("text") if isinstance(record, dict) else record
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{line_no}: each JSON line needs a string field 'text'.")
                yield text
    else:
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}).") from None


def _load_dataset(name: str) -> Iterable[str]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(
            f"Calibration {name!r} is neither an existing file nor folder; to use it as a Hub dataset name install "
            "`datasets` (pip install 'hf_moe_prune[data]')."
        ) from e
    try:
        dataset = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as e:  # network, missing dataset, auth: all end here with the same advice
        raise ValueError(
            f"Could not load calibration dataset {name!r} ({type(e).__name__}: {e}). It is neither an existing path "
            "nor a loadable Hub dataset; pass a local .txt/.jsonl file or a list of strings when offline."
        ) from e
    return (row["text"] for row in dataset)


def iter_texts(source: Any) -> Iterator[str]:
    """Yield the documents of a text calibration source."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        yield from _texts_from_path(path) if path.exists() else _load_dataset(str(source))
        return
    column_names = getattr(source, "column_names", None)
    if column_names is not None:  # datasets.Dataset
        if "text" not in column_names:
            raise ValueError(f"Calibration dataset has no 'text' column (columns: {column_names}).")
        source = (row["text"] for row in source)
    if not isinstance(source, Iterable):
        raise TypeError(f"Unsupported calibration data of type {type(source).__name__}; give {_SOURCES}.")
    for text in source:
        if not isinstance(text, str):
            raise TypeError(f"Calibration texts must be strings, got {type(text).__name__}; give {_SOURCES}.")
        yield text


def calibration_rows(
    source: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int = 0, oversample: int = 4
) -> torch.Tensor:
    """Tokenize and pack calibration data into at most `num_samples` rows of `seq_len` tokens.

    Documents are tokenized in order, joined by the tokenizer's EOS token, and packed without padding. Reading stops
    after `oversample` times the needed tokens; when that gives more rows than `num_samples`, a seeded random subset
    of rows is kept (in stream order), so that the rows spread over many documents instead of the first few long ones.
    A 2-D tensor of token ids is used as given (its first `num_samples` rows).

    Raises:
        `ValueError`: no data, or fewer tokens than one row of `seq_len`.
    """
    if source is None:
        raise ValueError(f"This method needs calibration data: set `calibration=` to {_SOURCES}.")
    if isinstance(source, torch.Tensor):
        if source.dtype.is_floating_point or source.dtype.is_complex or source.dtype == torch.bool:
            # .long() would truncate silently (probabilities or embeddings would all become token 0)
            raise TypeError(
                f"Calibration token ids must be an integer tensor, got {source.dtype}: pass the tokenizer's "
                "input_ids (or text with a tokenizer)."
            )
        if source.numel() and int(source.min()) < 0:
            raise ValueError(f"Calibration token ids must be ≥ 0, got {int(source.min())}.")
        ids = source.long()
        if ids.dim() == 2:
            if ids.numel() == 0:
                raise ValueError("The calibration tensor is empty.")
            return ids[:num_samples]
        if ids.dim() != 1:
            raise ValueError(f"Calibration token ids must be 1-D or 2-D, got shape {tuple(ids.shape)}.")
        stream = ids.tolist()
    else:
        if tokenizer is None:
            raise ValueError(
                "Text calibration data needs a tokenizer: pass `tokenizer=` (or load the model from a path that "
                "holds one), or give `calibration` as a tensor of token ids."
            )
        eos = getattr(tokenizer, "eos_token_id", None)
        needed = num_samples * seq_len * max(1, oversample)
        stream: list[int] = []
        for text in iter_texts(source):
            if not text.strip():
                continue
            # verbose=False: texts are packed into seq_len rows, so the tokenizer's "longer than the model's maximum
            # length" warning about a whole document never applies
            stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            if eos is not None:
                stream.append(eos)
            if len(stream) >= needed:
                break
    if not stream:
        raise ValueError(f"The calibration data is empty: give {_SOURCES} with some text in it.")
    rows = len(stream) // seq_len
    if rows == 0:
        raise ValueError(
            f"The calibration data has only {len(stream)} tokens, fewer than one row of seq_len={seq_len}: "
            "add more text or lower `seq_len`."
        )
    # Explicit CPU: the quantizer prepares the rows inside transformers' meta-device init context.
    packed = torch.tensor(stream[: rows * seq_len], dtype=torch.long, device="cpu").view(rows, seq_len)
    if rows < num_samples:
        logger.warning(
            "The calibration data gives %d rows of %d tokens, fewer than num_samples=%d (%d tokens in all): "
            "calibrating on %d rows. Add text, or lower seq_len or num_samples to silence this.",
            rows,
            seq_len,
            num_samples,
            len(stream),
            rows,
        )
    if rows > num_samples:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        chosen = torch.randperm(rows, generator=generator, device="cpu")[:num_samples].sort().values
        packed = packed[chosen]
    return packed
