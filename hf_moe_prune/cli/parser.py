"""The `hf-moe-prune` argument parser, kept where it always was; it lives in `hf_moe_prune_cli.parser` so that the
command line is parsed before torch is imported."""

from hf_moe_prune_cli.parser import DTYPES, EPILOG, build_parser

__all__ = ["DTYPES", "EPILOG", "build_parser"]
