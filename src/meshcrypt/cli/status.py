"""`meshcrypt status`: this node's WireGuard devices, peers (by node name), routes and rule.

Also the helpers the other operator commands share: the common options and the gathering of inputs
through the adapters (etcd, netlink, WireGuard). The reports themselves are built in `meshcrypt.ops`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshcrypt.cli import Subparsers
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import Link
from meshcrypt.model.errors import ConfigError, DatastoreUnavailable, KernelError
from meshcrypt.model.net import IPFamily
from meshcrypt.ops.cluster import CLUSTER_PREFIXES, ClusterResources
from meshcrypt.ops.config_view import ConfigInputs, EffectiveConfig, resource_name
from meshcrypt.ops.observe import FamilyObservation

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_SOCKET_DIR = "/var/run/wireguard"
DEFAULT_ETCD_TIMEOUT = 5.0


# ---- options shared by the operator commands -----------------------------------------------------


def add_datastore_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--etcd-endpoints",
        metavar="URLS",
        help=f"comma-separated etcd URLs (default: $ETCD_ENDPOINTS, else {DEFAULT_ENDPOINTS})",
    )
    parser.add_argument(
        "--etcd-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_ETCD_TIMEOUT,
        help=f"timeout of each etcd call (default {DEFAULT_ETCD_TIMEOUT:g})",
    )


def add_node_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--node", metavar="NAME", help=f"{what} (default: $NODENAME, else the host name)"
    )


def add_dataplane_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--netns",
        metavar="NAME",
        help="inspect the network namespace /run/netns/NAME instead of the current one",
    )
    parser.add_argument(
        "--socket-dir",
        metavar="DIR",
        default=DEFAULT_SOCKET_DIR,
        help="where wireguard-go's control sockets are (default %(default)s; from the host, a "
        "simulated node's are in /proc/<holder pid>/root/run/wireguard)",
    )


def add_inspection_options(parser: argparse.ArgumentParser, schema: str) -> None:
    """The options of the commands that inspect this node: etcd, node name, namespace, JSON."""
    add_datastore_options(parser)
    add_node_option(parser, "this node's name")
    add_dataplane_options(parser)
    parser.add_argument(
        "--json", action="store_true", help=f"print the report as JSON (schema {schema})"
    )


def emit(args: argparse.Namespace, doc: Mapping[str, object], human: str) -> None:
    """Print the report: `doc` as JSON with --json, else the human text."""
    import json

    sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else human)


def node_name(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str:
    given: str | None = args.node
    return given or environ.get("NODENAME", "").strip() or socket.gethostname()


def endpoints(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> list[str]:
    raw: str = args.etcd_endpoints or environ.get("ETCD_ENDPOINTS", "") or DEFAULT_ENDPOINTS
    return [e.strip() for e in raw.split(",") if e.strip()]


def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"meshcrypt: {message}\n")
    return code


# ---- gathering -----------------------------------------------------------------------------------


def load_cluster(
    urls: Sequence[str], timeout: float, prefixes: Sequence[str] = CLUSTER_PREFIXES
) -> tuple[ClusterResources | None, str | None]:
    """The decoded cluster, or (None, why) when etcd cannot be read. Raises ConfigError for
    malformed endpoints."""
    from meshcrypt.adapters.etcd import EtcdDatastore, parse_endpoints
    from meshcrypt.ops.cluster import read_cluster

    parse_endpoints(urls)

    async def read() -> ClusterResources:
        datastore = EtcdDatastore(urls, timeout=timeout)
        try:
            return await read_cluster(datastore, prefixes)
        finally:
            await datastore.close()

    # The adapter reports each endpoint switch at INFO; the command reports the outcome itself.
    adapter_log = logging.getLogger("meshcrypt.adapters.etcd")
    level = adapter_log.level
    adapter_log.setLevel(logging.WARNING)
    try:
        return asyncio.run(read()), None
    except DatastoreUnavailable as exc:
        return None, str(exc)
    finally:
        adapter_log.setLevel(level)


def config_inputs(
    node: str, cluster: ClusterResources | None, environ: Mapping[str, str] = os.environ
) -> ConfigInputs:
    """The configuration layers of `node`, like the agent's (FELIX_* parsed by the agent's code)."""
    from meshcrypt.agent.settings import lenient_env_layer

    env_layer, env_errors = lenient_env_layer(environ)
    return ConfigInputs(
        node=node,
        default_spec=cluster.felix_spec(resource_name(None)) if cluster else {},
        node_spec=cluster.felix_spec(resource_name(node)) if cluster else {},
        env_layer=env_layer,
        env_errors=tuple(env_errors),
        environ=dict(environ),
    )


def observe(config: FelixConfig, netns: str | None, socket_dir: str) -> list[FamilyObservation]:
    """Both families' devices, routes and rules. Raises KernelError when the namespace cannot
    be entered at all."""
    from meshcrypt.adapters.inspect import InspectNetlink, open_wireguard
    from meshcrypt.ops.observe import observe_family
    from meshcrypt.ports import WireguardDevices

    def opener(link: Link) -> WireguardDevices:
        return open_wireguard(link, netns=netns, socket_dir=socket_dir)

    table = config.routing_table_index
    with InspectNetlink(netns) as netlink:
        return [
            observe_family(netlink, opener, family, config.for_family(family).interface_name, table)
            for family in IPFamily
        ]


@dataclass(frozen=True, slots=True)
class Gathered:
    """What `status` and `doctor` read: etcd (if it answers), the configuration, the dataplane."""

    node: str
    urls: list[str]
    cluster: ClusterResources | None
    datastore_error: str | None
    config: EffectiveConfig
    observations: list[FamilyObservation]


def gather(args: argparse.Namespace) -> Gathered | int:
    """The inputs of `status` and `doctor`, or the exit status after printing why not."""
    from meshcrypt.ops.config_view import effective_config

    node = node_name(args)
    urls = endpoints(args)
    try:
        cluster, error = load_cluster(urls, args.etcd_timeout)
    except ConfigError as exc:
        return fail(str(exc))
    config = effective_config(config_inputs(node, cluster))
    try:
        observations = observe(config.config, args.netns, args.socket_dir)
    except KernelError as exc:
        return fail(f"cannot inspect the dataplane: {exc}")
    return Gathered(node, urls, cluster, error, config, observations)


def list_links(netns: str | None) -> tuple[list[Link] | None, str | None]:
    from meshcrypt.adapters.inspect import InspectNetlink

    try:
        with InspectNetlink(netns) as netlink:
            return netlink.links(), None
    except KernelError as exc:
        return None, str(exc)


# ---- the command ---------------------------------------------------------------------------------


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="this node's WireGuard devices, peers, routes and rule",
        description=(
            "Show, for each enabled IP family, the WireGuard device (kind, state, MTU, listening "
            "port, fwmark, public key), each peer with the node that publishes its key, its "
            "endpoint, allowed IPs, latest handshake, transfer and keepalive, the routes in the "
            "WireGuard routing table and the rule that uses it. Peers are named from the Node "
            "resources in etcd; when etcd is unreachable they are shown anyway, with a warning. "
            "Run it on the node, or inside a simulated node with "
            "`nsenter -t <holder pid> -m -n meshcrypt status`."
        ),
    )
    add_inspection_options(parser, "meshcrypt/status/v1")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    from meshcrypt.ops.status import build_status, render_status

    got = gather(args)
    if isinstance(got, int):
        return got
    report = build_status(
        got.node,
        config=got.config,
        observations=got.observations,
        cluster=got.cluster,
        endpoints=got.urls,
        datastore_error=got.datastore_error,
        now=time.time(),
    )
    emit(args, report.to_json(), render_status(report))
    return 0
