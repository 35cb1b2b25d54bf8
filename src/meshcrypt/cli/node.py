"""`meshcrypt node list`: every node's addresses, blocks, public keys and tunnel addresses."""

from __future__ import annotations

import argparse

from meshcrypt.cli import Subparsers
from meshcrypt.cli.status import add_datastore_options, endpoints, fail, load_cluster


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "node", help="the cluster's nodes as the datastore describes them"
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="nodes with addresses, blocks, public keys and tunnel addresses",
        description=(
            "List every Node: BGP addresses (IPv4, IPv6), IPAM blocks (affine blocks and block "
            "affinities), published WireGuard public keys and tunnel addresses. A key several "
            "nodes publish is marked DUPLICATE; resources that cannot be decoded are skipped "
            "with the reason."
        ),
    )
    add_datastore_options(listing)
    listing.add_argument(
        "--json", action="store_true", help="print JSON (schema meshcrypt/nodes/v1)"
    )
    listing.set_defaults(run=run_list)
    parser.set_defaults(run=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_list(args: argparse.Namespace) -> int:
    import json
    import sys

    from meshcrypt.model.errors import ConfigError
    from meshcrypt.ops.nodes import build_node_list, render_node_list

    try:
        cluster, error = load_cluster(endpoints(args), args.etcd_timeout)
    except ConfigError as exc:
        return fail(str(exc))
    if cluster is None:
        return fail(f"cannot read the nodes: {error}", 1)
    listing = build_node_list(cluster)
    if args.json:
        sys.stdout.write(json.dumps(listing.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(render_node_list(listing))
    return 0
