"""`meshcrypt config get|set|unset|list`: Felix parameters in FelixConfiguration resources."""

from __future__ import annotations

import argparse

from meshcrypt.cli import Subparsers
from meshcrypt.cli.status import (
    add_datastore_options,
    config_inputs,
    endpoints,
    fail,
    load_cluster,
    node_name,
)
from meshcrypt.model.config_parse import Param

_NODE_READ_HELP = (
    "show the layer node.NAME and the effective value on node NAME "
    "(default: $NODENAME, else the host name)"
)
_NODE_WRITE_HELP = "edit FelixConfiguration node.NAME instead of the cluster-wide default"


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="read and change Felix parameters (FelixConfiguration default / node.<name>)",
        description=(
            "Felix parameters are layered like the agent's: built-in defaults, then "
            "FelixConfiguration default, then FelixConfiguration node.<name>, then FELIX_* "
            "environment variables. A parameter may be named as Felix names it "
            "(WireguardMTU), as its spec field (wireguardMTU) or as its variable "
            "(FELIX_WIREGUARDMTU), in any case."
        ),
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION")

    get = actions.add_parser(
        "get",
        help="one parameter in each layer, and its effective value with the layer it comes from",
    )
    get.add_argument("param", help="the parameter")
    get.add_argument("--node", metavar="NAME", help=_NODE_READ_HELP)
    get.add_argument("--json", action="store_true", help="print JSON")
    add_datastore_options(get)
    get.set_defaults(run=run_get)

    writes = {
        "set": (
            "set a parameter in FelixConfiguration default (or node.NAME)",
            "Validate the value as the agent would, then write the spec field with a "
            "compare-and-swap that keeps every other field; the resource is created if absent. "
            "Values take the environment forms (true, 1400, 25s, 1-250, 0xffff0000) or JSON of "
            'the API form ([{"min": 1, "max": 250}]).',
        ),
        "unset": (
            "remove a parameter from FelixConfiguration default (or node.NAME)",
            "Remove the spec field with a compare-and-swap that keeps every other field; the "
            "lower layers then decide the effective value.",
        ),
    }
    for action, (summary, description) in writes.items():
        write = actions.add_parser(action, help=summary, description=description)
        write.add_argument("param", help="the parameter")
        if action == "set":
            write.add_argument("value", help="the new value")
        write.add_argument("--node", metavar="NAME", help=_NODE_WRITE_HELP)
        add_datastore_options(write)
        write.set_defaults(run=run_set if action == "set" else run_unset)

    listing = actions.add_parser(
        "list", help="the effective value and source of every WireGuard-related parameter"
    )
    listing.add_argument("--node", metavar="NAME", help=_NODE_READ_HELP)
    listing.add_argument(
        "--all", action="store_true", help="every parameter meshcrypt reads, not only WireGuard's"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_datastore_options(listing)
    listing.set_defaults(run=run_list)

    parser.set_defaults(run=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _param(name: str) -> Param | None:
    from meshcrypt.model.config_parse import find_param

    return find_param(name)


def _unknown(name: str) -> int:
    return fail(f"unknown parameter {name!r}; `meshcrypt config list --all` lists them")


def _read(args: argparse.Namespace) -> tuple[int, object]:
    """(0, cluster) or (exit status, None) after printing why."""
    from meshcrypt.datastore import layout
    from meshcrypt.model.errors import ConfigError

    try:
        cluster, error = load_cluster(
            endpoints(args), args.etcd_timeout, (layout.FELIX_CONFIGURATIONS,)
        )
    except ConfigError as exc:
        return fail(str(exc)), None
    if cluster is None:
        return fail(f"cannot read the configuration: {error}", 1), None
    return 0, cluster


def run_get(args: argparse.Namespace) -> int:
    import json
    import sys

    from meshcrypt.ops.cluster import ClusterResources
    from meshcrypt.ops.config_view import describe, effective_config, render_param

    param = _param(args.param)
    if param is None:
        return _unknown(args.param)
    status, cluster = _read(args)
    if not isinstance(cluster, ClusterResources):
        return status
    node = node_name(args)
    inputs = config_inputs(node, cluster)
    view = describe(param, effective_config(inputs), inputs)
    if args.json:
        sys.stdout.write(json.dumps({"node": node, **view.to_json()}, indent=2) + "\n")
    else:
        sys.stdout.write(render_param(view, node))
    return 0


def run_list(args: argparse.Namespace) -> int:
    import json
    import sys

    from meshcrypt.model.config_parse import PARAMS
    from meshcrypt.ops.cluster import ClusterResources
    from meshcrypt.ops.config_view import (
        describe,
        effective_config,
        render_param_list,
        wireguard_params,
    )

    status, cluster = _read(args)
    if not isinstance(cluster, ClusterResources):
        return status
    node = node_name(args)
    inputs = config_inputs(node, cluster)
    effective = effective_config(inputs)
    params = list(PARAMS) if args.all else wireguard_params()
    views = [describe(p, effective, inputs) for p in params]
    if args.json:
        doc = {
            "node": node,
            "errors": list(effective.errors),
            "parameters": [v.to_json() for v in views],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_param_list(views, node))
        for error in effective.errors:
            sys.stderr.write(f"warning: {error}\n")
    return 0


def _write(args: argparse.Namespace, param: Param, value: object) -> int:
    import asyncio
    import sys

    from meshcrypt.adapters.etcd import EtcdDatastore
    from meshcrypt.model.errors import ConfigError, DatastoreUnavailable, MeshcryptError
    from meshcrypt.ops.config_view import KIND, WriteOutcome, format_value, write_spec_field

    name = _resource(args)
    urls = endpoints(args)

    async def write() -> WriteOutcome:
        datastore = EtcdDatastore(urls, timeout=args.etcd_timeout)
        try:
            return await write_spec_field(datastore, name, param.spec_name, value)
        finally:
            await datastore.close()

    try:
        outcome = asyncio.run(write())
    except ConfigError as exc:
        return fail(str(exc))
    except DatastoreUnavailable as exc:
        return fail(f"cannot write {KIND} {name}: {exc}", 1)
    except MeshcryptError as exc:
        return fail(str(exc), 1)
    shown = "(unset)" if args.action == "unset" else format_value(value)
    sys.stdout.write(f"{KIND} {name}: spec.{param.spec_name} = {shown} ({outcome.value})\n")
    return 0


def _resource(args: argparse.Namespace) -> str:
    from meshcrypt.ops.config_view import resource_name

    node: str | None = args.node
    return resource_name(node)


def run_set(args: argparse.Namespace) -> int:
    from meshcrypt.model.errors import ConfigError
    from meshcrypt.ops.config_view import parse_cli_value

    param = _param(args.param)
    if param is None:
        return _unknown(args.param)
    try:
        value = parse_cli_value(param, args.value, _resource(args))
    except ConfigError as exc:
        return fail(str(exc))
    args.action = "set"
    return _write(args, param, value)


def run_unset(args: argparse.Namespace) -> int:
    from meshcrypt.datastore.codecs import DELETE

    param = _param(args.param)
    if param is None:
        return _unknown(args.param)
    args.action = "unset"
    return _write(args, param, DELETE)
