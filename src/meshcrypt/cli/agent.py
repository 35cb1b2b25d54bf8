"""`meshcrypt agent`: run the node agent in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from meshcrypt.cli import Subparsers


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="run the node agent (configured by NODENAME, ETCD_ENDPOINTS, IP, IP6, FELIX_*)",
        description=(
            "Run the node agent in the foreground until SIGTERM or SIGINT. The environment "
            "(NODENAME, DATASTORE_TYPE, ETCD_ENDPOINTS, IP, IP6, FELIX_*, "
            "MESHCRYPT_WIREGUARD_BACKEND) configures it; see the README."
        ),
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from meshcrypt.agent.main import run_agent

    return run_agent(os.environ)
