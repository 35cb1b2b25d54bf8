"""`meshcrypt doctor`: the troubleshooting checks of this node; exit status 0 when all pass."""

from __future__ import annotations

import argparse

from meshcrypt.cli import Subparsers
from meshcrypt.cli.status import add_inspection_options, emit, gather, list_links


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check this node's WireGuard state against the datastore (exit 1 on a failure)",
        description=(
            "Run the troubleshooting checks: etcd and the configuration are readable and valid; "
            "no two nodes share a public key; the device exists, is up and has the configured "
            "port and fwmark; its key is the one published in this node's Node status; every "
            "remote node with an address and a key is a peer with the right allowed IPs and "
            "endpoint, and no other peer exists; the routing table holds device routes for "
            "peers and throw routes for everything else; the rule exists with the right "
            "priority, mark and table; the device MTU fits the underlay. What the node should "
            "hold is computed with the agent's own calculation. Each check passes, fails with a "
            "one-line hint, or is skipped. Exit status: 0 when nothing fails, 1 otherwise, 2 on "
            "a usage error."
        ),
    )
    add_inspection_options(parser, "meshcrypt/doctor/v1")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from meshcrypt.ops.doctor import DoctorInputs, render_doctor, run_checks

    got = gather(args)
    if isinstance(got, int):
        return got
    links, links_error = list_links(args.netns)
    report = run_checks(
        DoctorInputs(
            node=got.node,
            config=got.config,
            observations=got.observations,
            cluster=got.cluster,
            endpoints=got.urls,
            datastore_error=got.datastore_error,
            links=links,
            links_error=links_error,
            socket_dir=args.socket_dir,
        )
    )
    emit(args, report.to_json(), render_doctor(report))
    return report.exit_code
