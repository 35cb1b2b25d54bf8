"""`meshcrypt agent`: run the node agent in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from meshcrypt.cli import Subparsers


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="run the node agent (configured by NODENAME, ETCD_ENDPOINTS, IP, IP6, FELIX_*)",
        description=(
            "Run the node agent in the foreground until SIGTERM or SIGINT; the dataplane stays "
            "in place when it stops. The environment configures it (see the README, "
            "'Running the agent')."
        ),
        epilog=(
            "environment: NODENAME (default: host name), DATASTORE_TYPE (etcdv3), "
            "ETCD_ENDPOINTS (http://127.0.0.1:2379), IP (autodetect), IP6 (none), "
            "FELIX_<PARAM> (any Felix parameter), MESHCRYPT_WIREGUARD_BACKEND "
            "(auto|kernel|userspace), MESHCRYPT_STATE_DIR (/run/meshcrypt), "
            "MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT (30 s; 0 turns the watchdog off), "
            "MESHCRYPT_WIREGUARD_GO_LOG_LEVEL (error|verbose). Health on 127.0.0.1:9099 "
            "(/liveness, /readiness); metrics on :9091 with FELIX_PROMETHEUSMETRICSENABLED=true; "
            "kill -USR1 prints every thread's stack to the log."
        ),
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from meshcrypt.agent.main import run_agent

    return run_agent(os.environ)
