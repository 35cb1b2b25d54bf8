"""`python -m bench <name> [options]`: run one benchmark (`python -m bench <name> --help`).

scale       the agent against 1,000-10,000 remote nodes: full resync, deltas, steady-state CPU
dataplane   5,000 peers + routes through the adapters and the manager, against the floor
ipam_claim  a node joining a cluster whose lowest N IPAM blocks are taken: its block claim
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("scale", "dataplane", "ipam_claim")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(__doc__, file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(f"bench.{argv[0]}")
    status: int = module.main(argv[1:])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
