"""`hf-moe-prune export-gguf`: a uniformly pruned checkpoint as one GGUF file for llama.cpp
(`hf_moe_prune.export.gguf`)."""

from __future__ import annotations

import argparse
from typing import Any


def run_export_gguf(args: argparse.Namespace) -> dict[str, Any]:
    """Write `args.model` (a saved folder) as `args.output` (a .gguf file).

    Args:
        args (`argparse.Namespace`): The parsed and checked arguments.
    """
    from hf_moe_prune.export.gguf import export_gguf

    return {"model": args.model, "output": args.output, **export_gguf(args.model, args.output, dtype=args.gguf_dtype)}
