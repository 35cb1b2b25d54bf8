"""Programming 5,000 peers and 5,000 routes: meshcrypt vs. the floor, side by side.

Floor: one UAPI `set` carrying every peer, written by this script, plus `ip -batch` for the routes.
Ours (1): the adapters alone (one `UapiWireguardDevices.configure` + `RtNetlink.routes_replace`).
Ours (2): the whole manager: 5,000 remote nodes recorded, then one `apply()`.
Each variant runs on a fresh simulated node (its own netns, mount namespace and wireguard-go), in
rotation, `--rounds` times; the medians are printed with their ratio to the floor. Needs root.

    python -m bench dataplane [--peers 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.baselines import IFACE, TABLE, Peers, floor, start_device
from meshcrypt.adapters.backend import BackendMode, select_backend
from meshcrypt.adapters.netlink import RtNetlink
from meshcrypt.adapters.nodens import SimNode
from meshcrypt.adapters.sysfs import FileSysfs
from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor
from meshcrypt.adapters.wireguard_uapi import UapiWireguardDevices
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import DeviceConfig, Endpoint, PeerConfig, Route, RouteKind
from meshcrypt.model.errors import WaitingForLink
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.manager import WireguardManager


def _node(tag: str, state: Path) -> tuple[SimNode, WireguardGoSupervisor]:
    sim = SimNode.create(tag, netns=f"mcb{os.getpid()}-{tag}")
    try:
        return sim, start_device(sim, state)
    except BaseException:
        sim.destroy()
        raise


def adapters(sim: SimNode, sup: WireguardGoSupervisor, peers: Peers) -> float:
    wg = UapiWireguardDevices(sup.socket_dir)
    nl = RtNetlink(sim.netns)
    index = nl.link_by_name(IFACE).index  # type: ignore[union-attr]
    start = time.perf_counter()
    wg.configure(
        IFACE,
        DeviceConfig(
            private_key=PrivateKey.generate(),
            listen_port=51820,
            peers=tuple(
                PeerConfig(
                    k,
                    endpoint=Endpoint(ipaddress.ip_address(ep), 51820),
                    replace_allowed_ips=True,
                    allowed_ips=(ipaddress.ip_network(c),),
                )
                for k, ep, c in zip(peers.keys, peers.endpoints, peers.cidrs, strict=True)
            ),
        ),
    )
    nl.routes_replace(
        [Route(TABLE, ipaddress.ip_network(c), RouteKind.DEVICE, index, 3, 0) for c in peers.cidrs]
    )
    elapsed = time.perf_counter() - start
    wg.close()
    nl.close()
    return elapsed


def manager(sim: SimNode, sup: WireguardGoSupervisor, peers: Peers) -> float:
    backend = select_backend(
        BackendMode.USERSPACE, interfaces=[IFACE], supervisor=sup, netns=sim.netns
    )
    config = FelixConfig(wireguard_enabled=True, wireguard_mtu=1420).for_family(IPFamily.V4)
    m = WireguardManager(
        sim.name,
        config,
        netlink=backend.netlink,
        wireguard=backend.wireguard,
        sysfs=FileSysfs(sim.netns),
        status_callback=lambda k: None,
        link_kind=backend.link_kind,
    )
    start = time.perf_counter()
    for i, (k, ep, c) in enumerate(zip(peers.keys, peers.endpoints, peers.cidrs, strict=True)):
        name = f"node{i}"
        m.endpoint_update(name, ipaddress.ip_address(ep))
        m.endpoint_wireguard_update(name, k, None)
        m.route_update(name, ipaddress.ip_network(c))
    for _ in range(5):
        try:
            m.apply()
            break
        except WaitingForLink:
            continue
    elapsed = time.perf_counter() - start
    check = sim.run("wg", "show", IFACE, "peers").split()
    assert len(check) == len(peers.keys), len(check)
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench dataplane", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    peers = Peers.synthetic(args.peers)
    variants: dict[str, Callable[[SimNode, WireguardGoSupervisor, Peers], float]] = {
        "floor: one UAPI set + ip -batch": lambda sim, sup, peers: floor(sim, peers),
        "meshcrypt adapters": adapters,
        "meshcrypt manager apply": manager,
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, fn) in enumerate(variants.items()):
                sim, sup = _node(f"r{r}v{i}", Path(tmp))
                try:
                    results[name].append(fn(sim, sup, peers))
                finally:
                    sup.stop(IFACE)
                    sim.destroy()
    base = statistics.median(results["floor: one UAPI set + ip -batch"])
    print(
        f"{args.peers} peers (1 allowed IP each) + {args.peers} routes, median of {args.rounds}, "
        f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs"
    )
    for name, times in results.items():
        med = statistics.median(times)
        print(
            f"  {name:34s} {med * 1000:8.0f} ms   x{med / base:.2f} of floor   "
            f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
