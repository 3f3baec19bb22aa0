"""The `hf-moe-prune` launcher: the command line is parsed before torch and transformers are imported, so `--help`,
`--version` and usage mistakes answer at once; then `hf_moe_prune.cli` runs the subcommand.

The parser lives here, outside the `hf_moe_prune` package, because importing anything inside that package first runs
its `__init__` (which registers the quantizer with transformers, importing torch: seconds).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `hf-moe-prune` with `argv` (default: `sys.argv[1:]`) and return the exit code (0, 1 or 2)."""
    from hf_moe_prune_cli.parser import build_parser

    args = build_parser().parse_args(argv)  # --help, --version and argparse's usage errors exit here
    from hf_moe_prune.cli import run_parsed

    return run_parsed(args)


if __name__ == "__main__":
    sys.exit(main())
