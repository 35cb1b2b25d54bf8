"""The `meshcrypt` command: argument parsing and dispatch.

Only `--version` and `--help` exist so far; each subcommand arrives with the issue that builds it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from meshcrypt import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcrypt",
        description=(
            "Encrypts node-to-node cluster traffic with WireGuard, the way Calico Felix does: "
            "one peer per remote node, a policy routing table and a 'not fwmark' rule."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
