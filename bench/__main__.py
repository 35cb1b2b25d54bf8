"""`python -m bench <name> [options]`: run one benchmark (`python -m bench <name> --help`).

scale       the agent against 1,000-10,000 remote nodes: full resync, deltas, steady-state CPU
dataplane   5,000 peers + routes through the adapters and the manager, against the floor
ipam_claim  a node joining a cluster whose lowest N IPAM blocks are taken: its block claim
converge    a node joins a 10-node lab: until every other node routes and pings to it through WireGuard
throughput  pod-to-pod iperf3 through the lab tunnel against a hand-configured tunnel and the underlay
all         scale, converge and throughput at their default sizes, one after the other
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("scale", "dataplane", "ipam_claim", "converge", "throughput")
ALL = ("scale", "converge", "throughput")


def main(argv: list[str]) -> int:
    if argv[:1] == ["all"]:
        worst = 0
        for name in ALL:
            print(f"==> python -m bench {name}", flush=True)
            worst = max(worst, main([name]))
        return worst
    if not argv or argv[0] not in BENCHMARKS:
        print(__doc__, file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(f"bench.{argv[0]}")
    status: int = module.main(argv[1:])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
