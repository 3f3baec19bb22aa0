"""The small trained MoE fixtures shipped with the package, and their held-out calibration and evaluation texts.

Built by `benchmarks/fixtures/train_fixtures.py` (see its README): real transformers MoE models trained on CPython's
source code (`code`) and CPython's documentation (`prose`).
"""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
FIXTURES = ("qwen3_moe", "qwen2_moe")
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


def mixed_texts(split: str = "calibration") -> list[str]:
    """Documents of all domains, interleaved one by one, so any prefix of the list mixes the domains evenly."""
    per_domain = [fixture_texts(d, split) for d in DOMAINS]
    return [doc for group in zip_longest(*per_domain) for doc in group if doc is not None]
