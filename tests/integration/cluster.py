"""A small cluster for agent tests: etcd, a bridge underlay, and `meshcrypt agent` per node.

The bridge lives in the root namespace (like the lab's) with 192.168.<net>.1/24; etcd serves clients on
that address and on loopback, so agents inside the node namespaces and the test itself reach it. Each
node is a `SimNode` (network namespace + private mount namespace) with `eth0` in the bridge, address
192.168.<net>.<10+i>/24, and its loopback holding one "pod" address from the node's block
once the block is known, so tests can send traffic between two nodes' blocks.

`cluster(tmp_path, stack="v6")` builds an IPv6-only underlay instead (bridge fd00:<net>::1/64, nodes
fd00:<net>::<10+i>/64, an IPv6 pool fd65::/48 with /122 blocks, WireGuard enabled for IPv6 only,
agents with `IP=none` and `IP6` set); `stack="dual"` has both, with both pools, both families
enabled and etcd on both bridge addresses.

Agents run as `python -m meshcrypt agent` inside the node (nsenter), userspace backend, each in its
own session; their logs go to the test's tmp folder. Everything is removed at the end: agents,
wireguard-go processes (killed through the node's pids), namespaces, the bridge.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcrypt.adapters.nodens import SimNode
from meshcrypt.datastore import layout
from tests.integration.etcd import EtcdServer, running_etcd
from tests.integration.mesh import stop_capture

IFACE = "wireguard.cali"
IFACE6 = "wg-v6.cali"
POOL = {"cidr": "10.65.0.0/16", "blockSize": 26}
POOL6 = {"cidr": "fd65::/48", "blockSize": 122}
STACKS = ("v4", "v6", "dual")


def run(*cmd: str, check: bool = True) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


def wait_for(
    what: str, check: Callable[..., Any], *args: Any, timeout: float = 30.0, poll: float = 0.2
) -> Any:
    """Poll `check(*args)` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check(*args)
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(poll)


def resource(kind: str, name: str, spec: dict[str, Any], **extra: Any) -> str:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
        **extra,
    }
    return json.dumps(doc)


@dataclass(eq=False)
class AgentNode:
    name: str
    sim: SimNode
    address: str  # underlay address without prefix (IPv4, or IPv6 in an IPv6-only cluster)
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_level: str = os.environ.get("MESHCRYPT_TEST_LOG_LEVEL", "INFO")
    address6: str | None = None  # IPv6 underlay address without prefix (v6 and dual stacks)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        with self.log_path.open("ab") as log:
            self.proc = self.sim.popen(
                "env",
                *(f"{k}={v}" for k, v in self.env.items()),
                sys.executable,
                "-m",
                "meshcrypt",
                "--log-level",
                self.log_level,
                "agent",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the agent and wait for it; its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sh(self, *cmd: str, check: bool = True) -> str:
        return self.sim.run(*cmd, check=check)

    def wg_dump(self, iface: str = IFACE) -> list[list[str]]:
        out = self.sim.run("wg", "show", iface, "dump", check=False)
        return [line.split("\t") for line in out.strip().splitlines() if line]

    def peers(self, iface: str = IFACE) -> dict[str, dict[str, Any]]:
        """Public key -> {endpoint, allowed_ips (set), latest_handshake (epoch s, 0 = never),
        keepalive} from `wg show dump`."""
        rows = self.wg_dump(iface)[1:]
        return {
            r[0]: {
                "endpoint": r[2],
                "allowed_ips": set(r[3].split(",")) - {"(none)"},
                "latest_handshake": int(r[4]),
                "keepalive": r[7],
            }
            for r in rows
        }

    def public_key(self, iface: str = IFACE) -> str:
        dump = self.wg_dump(iface)
        return dump[0][1] if dump else ""

    def routes(self, table: int = 1, family: str = "-4") -> list[dict[str, Any]]:
        out = self.sim.run("ip", "-j", family, "route", "show", "table", str(table), check=False)
        found: list[dict[str, Any]] = json.loads(out) if out.strip() else []
        return found

    def rules(self, family: str = "-4") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.sim.run("ip", "-j", family, "rule", "show"))
        return found

    def route_kinds(self, family: str = "-4", table: int = 1) -> dict[str, str]:
        """dst (always with its prefix length) -> "throw" or the device, for our table."""
        host = "/32" if family == "-4" else "/128"
        found = {}
        for r in self.routes(table, family):
            dst = r["dst"] if "/" in r["dst"] else r["dst"] + host
            found[dst] = "throw" if r.get("type") == "throw" else r.get("dev", "?")
        return found

    def lose_dataplane(self) -> None:
        """What a reboot loses: every WireGuard device (wireguard-go killed, so its key is gone),
        our routing table and rules, the nftables table, and /run. Stop the agent first."""
        assert not self.alive, "stop the agent first"
        for pid in self.sim.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                    os.kill(pid, signal.SIGKILL)
        wait_for(
            f"{self.name}'s WireGuard devices to go",
            lambda: (
                not any(
                    self.sh("ip", "link", "show", name, check=False).strip()
                    for name in (IFACE, IFACE6)
                )
            ),
        )
        for family in ("-4", "-6"):
            self.sh("ip", family, "route", "flush", "table", "1", check=False)
            while self.sh("ip", family, "rule", "show", "pref", "99").strip():
                self.sh("ip", family, "rule", "del", "pref", "99")
        self.sh("nft", "delete", "table", "inet", "meshcrypt", check=False)
        self.sh("sh", "-c", "rm -f /run/wireguard/* /run/meshcrypt/*")


@dataclass(eq=False)
class Cluster:
    etcd: EtcdServer
    bridge: str
    net: int
    tmp: Path
    nodes: dict[str, AgentNode] = field(default_factory=dict)
    stack: str = "v4"

    @property
    def ipv4(self) -> bool:
        return self.stack in ("v4", "dual")

    @property
    def ipv6(self) -> bool:
        return self.stack in ("v6", "dual")

    @property
    def gateway(self) -> str:
        """The bridge's IPv4 address (where etcd serves)."""
        return f"192.168.{self.net}.1"

    @property
    def gateway6(self) -> str:
        """The bridge's IPv6 address (where etcd serves in the v6 and dual stacks)."""
        return f"fd00:{self.net}::1"

    @property
    def etcd_hosts(self) -> list[str]:
        """The bridge addresses etcd serves on (for `classify_underlay`)."""
        return [h for h, on in ((self.gateway, self.ipv4), (self.gateway6, self.ipv6)) if on]

    @property
    def etcd_url(self) -> str:
        """etcd on the bridge: IPv4 unless the cluster is IPv6-only."""
        host = self.gateway if self.ipv4 else f"[{self.gateway6}]"
        return f"http://{host}:{self.etcd.client_port}"

    @property
    def etcd_urls(self) -> list[str]:
        """Every bridge address etcd serves on (the agents' ETCD_ENDPOINTS)."""
        urls = [f"http://{self.gateway}:{self.etcd.client_port}"] if self.ipv4 else []
        if self.ipv6:
            urls.append(f"http://[{self.gateway6}]:{self.etcd.client_port}")
        return urls

    def add_node(self, name: str, *, start: bool = True, **env: str) -> AgentNode:
        index = len(self.nodes) + 1
        sim = SimNode.create(f"mc{self.net}{name}")
        try:
            address, address6 = self._wire(sim, name, index)
        except BaseException:
            sim.destroy()
            raise
        node = AgentNode(
            name=name,
            sim=sim,
            address=address if address is not None else str(address6),
            address6=address6,
            log_path=self.tmp / f"agent-{name}.log",
            env={
                "NODENAME": name,
                "ETCD_ENDPOINTS": ",".join(self.etcd_urls),
                "IP": f"{address}/24" if address is not None else "none",
                "IP6": f"{address6}/64" if address6 is not None else "none",
                "MESHCRYPT_WIREGUARD_BACKEND": "userspace",
                "FELIX_HEALTHENABLED": "true",
                **env,
            },
        )
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def _wire(self, sim: SimNode, name: str, index: int) -> tuple[str | None, str | None]:
        """eth0 into the bridge with 192.168.<net>.<10+index>/24 and/or fd00:<net>::<10+index>/64
        and default routes; the addresses."""
        host_end = f"v{self.net}{name}"[:15]
        address = f"192.168.{self.net}.{10 + index}" if self.ipv4 else None
        address6 = f"fd00:{self.net}::{10 + index}" if self.ipv6 else None
        run(
            "ip",
            "link",
            "add",
            host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            sim.netns,
        )
        run("ip", "link", "set", host_end, "master", self.bridge, "up")
        if address is not None:
            sim.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        if address6 is not None:
            sim.run("ip", "-6", "addr", "add", f"{address6}/64", "dev", "eth0", "nodad")
        sim.run("ip", "link", "set", "eth0", "up")
        if address is not None:
            sim.run("ip", "route", "add", "default", "via", self.gateway)
        if address6 is not None:
            sim.run("ip", "-6", "route", "add", "default", "via", self.gateway6)
        return address, address6

    # -- datastore helpers ------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.etcd.values(key)
        if not found:
            return None
        value: dict[str, Any] = json.loads(found[0])
        return value

    def node_doc(self, name: str) -> dict[str, Any] | None:
        return self.get(layout.node_key(name))

    def published_key(self, name: str, field: str = "wireguardPublicKey") -> str:
        doc = self.node_doc(name) or {}
        value = doc.get("status", {}).get(field, "")
        return value if isinstance(value, str) else ""

    def put_json(self, key: str, doc: dict[str, Any]) -> None:
        self.etcd.put(key, json.dumps(doc))

    def wireguard_spec(self, **spec: Any) -> dict[str, Any]:
        """FelixConfiguration fields enabling WireGuard for the cluster's families, plus `spec`."""
        wanted: dict[str, Any] = {}
        if self.ipv4:
            wanted["wireguardEnabled"] = True
        if self.ipv6:
            wanted["wireguardEnabledV6"] = True
        return {**wanted, **spec}

    def set_felix(self, name: str = "default", **spec: Any) -> None:
        self.etcd.put(
            layout.felix_configuration_key(name), resource("FelixConfiguration", name, spec)
        )

    def blocks_of(self, name: str, family: int = 4) -> list[str]:
        """The CIDRs of the IPAM blocks of `family` affine to `name` (from the blocks themselves)."""
        prefix = f"/calico/ipam/v2/assignment/ipv{family}/block/"
        docs = [json.loads(value) for value in self.etcd.values(prefix, prefix=True)]
        return sorted(doc["cidr"] for doc in docs if doc.get("affinity") == f"host:{name}")

    def give_pod_address(self, node: AgentNode, family: int = 4) -> str:
        """Put the 10th address of the node's block of `family` on its loopback (a stand-in pod);
        the address."""
        import ipaddress

        (block,) = wait_for(
            f"an IPv{family} block for {node.name}", lambda: self.blocks_of(node.name, family)
        )
        addr = str(ipaddress.ip_network(block)[10])
        length = 32 if family == 4 else 128
        node.sim.run("ip", "addr", "replace", f"{addr}/{length}", "dev", "lo")
        return addr

    def destroy(self) -> None:
        for node in self.nodes.values():
            node.stop(signal.SIGKILL, timeout=5)
        for node in self.nodes.values():
            node.sim.destroy()  # kills wireguard-go and anything else left in the node
        run("ip", "link", "delete", self.bridge, check=False)


def mesh_converged(
    c: Cluster,
    nodes: list[AgentNode],
    *,
    endpoint: Callable[[AgentNode], str],
    allowed: Callable[[AgentNode], set[str]],
    node_ok: Callable[[AgentNode], bool] = lambda node: True,
    iface: str = IFACE,
    status_field: str = "wireguardPublicKey",
) -> bool:
    """Every node publishes its device's key (in `status_field`) and passes `node_ok`; every other
    node is its peer on `iface`, with `endpoint(other)` and `allowed(other)` as allowed IPs."""
    for node in nodes:
        key = node.public_key(iface)
        if not key or c.published_key(node.name, status_field) != key or not node_ok(node):
            return False
    for node in nodes:
        peers = node.peers(iface)
        want = {other.public_key(iface): other for other in nodes if other is not node}
        if set(peers) != set(want):
            return False
        for key, other in want.items():
            if peers[key]["endpoint"] != endpoint(other):
                return False
            if peers[key]["allowed_ips"] != allowed(other):
                return False
    return True


WIREGUARD_PORTS = (51820, 51821)
_ICMP6_CONTROL = ("neighbor", "router", "multicast listener")
_PACKET = re.compile(r"\b(IP6?) (\S+) > (\S+?):? (.*)$")


def _split_host_port(text: str, family: str) -> tuple[str, int | None]:
    """tcpdump -nn's `addr.port` (or bare `addr` for ICMP): IPv4 has four dots without a port."""
    head, _, tail = text.rpartition(".")
    if family == "IP" and text.count(".") == 3:
        return text, None
    return (head, int(tail)) if tail.isdigit() else (text, None)


def classify_underlay(lines: list[str], etcd_hosts: Iterable[str] = ()) -> dict[str, list[str]]:
    """Sort captured packets (tcpdump -nn lines): `wireguard` (UDP from or to a WireGuard port),
    `etcd` (from or to one of `etcd_hosts`), `control` (ARP, IGMP, IPv6 neighbour and router discovery)
    and `other` — anything else, e.g. plaintext between two nodes."""
    etcd = set(etcd_hosts)
    found: dict[str, list[str]] = {"wireguard": [], "etcd": [], "control": [], "other": []}
    for line in lines:
        match = _PACKET.search(line)
        # IGMP membership reports (sent from 0.0.0.0 while an interface has no IPv4 address yet)
        # are link control too.
        if (
            "ARP," in line
            or ": igmp " in line
            or (
                match is not None
                and "ICMP6," in match.group(4)
                and any(kind in match.group(4) for kind in _ICMP6_CONTROL)
            )
        ):
            found["control"].append(line)
            continue
        if match is None:
            found["other"].append(line)
            continue
        family, src, dst, rest = match.groups()
        (src_ip, sport), (dst_ip, dport) = (
            _split_host_port(src, family),
            _split_host_port(dst, family),
        )
        if src_ip in etcd or dst_ip in etcd:
            found["etcd"].append(line)
        elif rest.startswith("UDP") and {sport, dport} & set(WIREGUARD_PORTS):
            found["wireguard"].append(line)
        else:
            found["other"].append(line)
    return found


@contextlib.contextmanager
def captured(node: AgentNode, path: Path) -> Iterator[list[str]]:
    """tcpdump on the node's eth0 while the block runs; the list is filled when it ends.

    `--immediate-mode`: without it tcpdump takes packets from the kernel in blocks handed over
    after up to a second, and a capture stopped sooner than that loses the last ones."""
    proc = node.sim.popen(
        "tcpdump", "-i", "eth0", "-nn", "-U", "--immediate-mode", "-w", str(path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    try:
        time.sleep(1.0)  # attached before the traffic starts
        yield lines
    finally:
        lines.extend(stop_capture(proc, path))


def _new_bridge() -> tuple[int, str]:
    for net in random.sample(range(100, 200), 100):
        bridge = f"mcbr{net}"
        res = subprocess.run(
            ["ip", "link", "add", bridge, "type", "bridge"], capture_output=True, check=False
        )
        if res.returncode == 0:
            return net, bridge
    raise RuntimeError("no free test underlay (mcbr100..mcbr199 all exist)")


@contextlib.contextmanager
def cluster(tmp_path: Path, *, stack: str = "v4") -> Iterator[Cluster]:
    """A bridge `mcbr<net>` with 192.168.<net>.1/24, etcd serving on it, an IPPool and WireGuard on.

    `net` is picked from 100–199 by creating the bridge (atomic: a name in use fails), so test runs
    in parallel, and the lab (192.168.50.0/24), never share an underlay. `stack` is "v4", "v6" or
    "dual" (see the module docstring)."""
    if stack not in STACKS:
        raise ValueError(f"stack must be one of {STACKS}, not {stack!r}")
    net, bridge = _new_bridge()
    try:
        hosts = []
        if stack in ("v4", "dual"):
            run("ip", "addr", "add", f"192.168.{net}.1/24", "dev", bridge)
            hosts.append(f"192.168.{net}.1")
        if stack in ("v6", "dual"):
            run("ip", "-6", "addr", "add", f"fd00:{net}::1/64", "dev", bridge, "nodad")
            hosts.append(f"[fd00:{net}::1]")
        run("ip", "link", "set", bridge, "up")
        with running_etcd(tmp_path, extra_client_hosts=tuple(hosts)) as etcd:
            c = Cluster(etcd=etcd, bridge=bridge, net=net, tmp=tmp_path, stack=stack)
            if c.ipv4:
                etcd.put(
                    layout.ip_pool_key("default-ipv4"), resource("IPPool", "default-ipv4", POOL)
                )
            if c.ipv6:
                etcd.put(
                    layout.ip_pool_key("default-ipv6"), resource("IPPool", "default-ipv6", POOL6)
                )
            c.set_felix(**c.wireguard_spec())
            try:
                yield c
            finally:
                c.destroy()
    finally:
        run("ip", "link", "delete", bridge, check=False)
