"""The small trained MoE models shipped with the package, and their held-out calibration and evaluation texts.

Used by the command line (its default model and data) and by the tests (`hf_moe_prune.testing` re-exports them), so
they live outside `testing/`: production code does not import test helpers.

Built by `benchmarks/fixtures/train_fixtures.py` (see its README): real transformers MoE models trained on CPython's
source code (`code`) and CPython's documentation (`prose`).
"""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parent / "testing" / "fixtures"
FIXTURES = ("qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v3")
DOMAINS = ("code", "prose")
DOC_SEPARATOR = "\n\n<|endoftext|>\n\n"


def fixture_path(name: str = "qwen3_moe") -> str:
    """Folder of the trained fixture `name` (a checkpoint with tokenizer, loadable by `from_pretrained`)."""
    if name not in FIXTURES:
        raise ValueError(f"Unknown fixture {name!r}; the package ships {', '.join(FIXTURES)}.")
    path = FIXTURES_DIR / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"Fixture {name!r} is missing at {path}; rebuild it with benchmarks/fixtures/.")
    return str(path)


def fixture_texts(domain: str, split: str = "calibration") -> list[str]:
    """Documents of one domain (`code` or `prose`) and split (`calibration` or `evaluation`)."""
    if domain not in DOMAINS or split not in ("calibration", "evaluation"):
        raise ValueError(f"domain must be one of {DOMAINS} and split 'calibration' or 'evaluation'.")
    text = (FIXTURES_DIR / "data" / domain / f"{split}.txt").read_text(encoding="utf-8")
    return [doc.strip() for doc in text.split(DOC_SEPARATOR) if doc.strip()]


def _pieces(doc: str, size: int) -> list[str]:
    """Cut a document at blank lines into pieces of about `size` characters."""
    pieces, current = [], ""
    for paragraph in doc.split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= size:
            pieces.append(current)
            current = ""
    return [*pieces, current] if current else pieces


def mixed_texts(split: str = "calibration", piece_chars: int = 2000) -> list[str]:
    """All domains interleaved in pieces of about `piece_chars` characters, so any prefix mixes them evenly."""
    per_domain = [[p for doc in fixture_texts(d, split) for p in _pieces(doc, piece_chars)] for d in DOMAINS]
    return [piece for group in zip_longest(*per_domain) for piece in group if piece is not None]
