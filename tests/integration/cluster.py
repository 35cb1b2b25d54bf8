"""A small cluster for agent tests: etcd, a bridge underlay, and `meshcrypt agent` per node.

The bridge lives in the root namespace (like the lab's) with 192.168.<net>.1/24; etcd serves clients on
that address and on loopback, so agents inside the node namespaces and the test itself reach it. Each
node is a `SimNode` (network namespace + private mount namespace) with `eth0` in the bridge, address
192.168.<net>.<10+i>/24, and its loopback holding one "pod" address from the node's block
once the block is known, so tests can send traffic between two nodes' blocks.

Agents run as `python -m meshcrypt agent` inside the node (nsenter), userspace backend, each in its
own session; their logs go to the test's tmp folder. Everything is removed at the end: agents,
wireguard-go processes (killed through the node's pids), namespaces, the bridge.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcrypt.adapters.nodens import SimNode
from meshcrypt.datastore import layout
from tests.integration.etcd import EtcdServer, running_etcd

IFACE = "wireguard.cali"
POOL = {"cidr": "10.65.0.0/16", "blockSize": 26}


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
    address: str  # underlay address without prefix
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_level: str = os.environ.get("MESHCRYPT_TEST_LOG_LEVEL", "INFO")

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
        """Public key -> {endpoint, allowed_ips (set), keepalive} from `wg show dump`."""
        rows = self.wg_dump(iface)[1:]
        return {
            r[0]: {
                "endpoint": r[2],
                "allowed_ips": set(r[3].split(",")) - {"(none)"},
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


@dataclass(eq=False)
class Cluster:
    etcd: EtcdServer
    bridge: str
    net: int
    tmp: Path
    nodes: dict[str, AgentNode] = field(default_factory=dict)

    @property
    def etcd_url(self) -> str:
        return f"http://192.168.{self.net}.1:{self.etcd.client_port}"

    def add_node(self, name: str, *, start: bool = True, **env: str) -> AgentNode:
        index = len(self.nodes) + 1
        sim = SimNode.create(f"mc{self.net}{name}")
        try:
            address = self._wire(sim, name, index)
        except BaseException:
            sim.destroy()
            raise
        node = AgentNode(
            name=name,
            sim=sim,
            address=address,
            log_path=self.tmp / f"agent-{name}.log",
            env={
                "NODENAME": name,
                "ETCD_ENDPOINTS": self.etcd_url,
                "IP": f"{address}/24",
                "MESHCRYPT_WIREGUARD_BACKEND": "userspace",
                "FELIX_HEALTHENABLED": "true",
                **env,
            },
        )
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def _wire(self, sim: SimNode, name: str, index: int) -> str:
        """eth0 into the bridge with 192.168.<net>.<10+index>/24 and a default route; the address."""
        host_end = f"v{self.net}{name}"[:15]
        address = f"192.168.{self.net}.{10 + index}"
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
        sim.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        sim.run("ip", "link", "set", "eth0", "up")
        sim.run("ip", "route", "add", "default", "via", f"192.168.{self.net}.1")
        return address

    # -- datastore helpers ------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        import base64
        import urllib.request

        body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        req = urllib.request.Request(
            f"{self.etcd.endpoint}/v3/kv/range",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            kvs = json.loads(resp.read()).get("kvs", [])
        if not kvs:
            return None
        value: dict[str, Any] = json.loads(base64.b64decode(kvs[0]["value"]))
        return value

    def node_doc(self, name: str) -> dict[str, Any] | None:
        return self.get(layout.node_key(name))

    def published_key(self, name: str, field: str = "wireguardPublicKey") -> str:
        doc = self.node_doc(name) or {}
        value = doc.get("status", {}).get(field, "")
        return value if isinstance(value, str) else ""

    def put_json(self, key: str, doc: dict[str, Any]) -> None:
        self.etcd.put(key, json.dumps(doc))

    def set_felix(self, name: str = "default", **spec: Any) -> None:
        self.etcd.put(
            layout.felix_configuration_key(name), resource("FelixConfiguration", name, spec)
        )

    def blocks_of(self, name: str) -> list[str]:
        """The CIDRs of the IPAM blocks affine to `name` (from the blocks themselves)."""
        import base64
        import urllib.request

        prefix = "/calico/ipam/v2/assignment/ipv4/block/"
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps(
            {
                "key": base64.b64encode(prefix.encode()).decode(),
                "range_end": base64.b64encode(end.encode()).decode(),
            }
        ).encode()
        req = urllib.request.Request(
            f"{self.etcd.endpoint}/v3/kv/range",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            kvs = json.loads(resp.read()).get("kvs", [])
        found = []
        for kv in kvs:
            doc = json.loads(base64.b64decode(kv["value"]))
            if doc.get("affinity") == f"host:{name}":
                found.append(doc["cidr"])
        return sorted(found)

    def give_pod_address(self, node: AgentNode) -> str:
        """Put the 10th address of the node's block on its loopback (a stand-in pod); the address."""
        import ipaddress

        (block,) = wait_for(f"a block for {node.name}", lambda: self.blocks_of(node.name))
        addr = str(ipaddress.ip_network(block)[10])
        node.sim.run("ip", "addr", "replace", f"{addr}/32", "dev", "lo")
        return addr

    def destroy(self) -> None:
        for node in self.nodes.values():
            node.stop(signal.SIGKILL, timeout=5)
        for node in self.nodes.values():
            node.sim.destroy()  # kills wireguard-go and anything else left in the node
        run("ip", "link", "delete", self.bridge, check=False)


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
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A bridge `mcbr<net>` with 192.168.<net>.1/24, etcd serving on it, an IPPool and WireGuard on.

    `net` is picked from 100–199 by creating the bridge (atomic: a name in use fails), so test runs
    in parallel, and the lab (192.168.50.0/24), never share an underlay."""
    net, bridge = _new_bridge()
    try:
        run("ip", "addr", "add", f"192.168.{net}.1/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        with running_etcd(tmp_path, extra_client_hosts=(f"192.168.{net}.1",)) as etcd:
            c = Cluster(etcd=etcd, bridge=bridge, net=net, tmp=tmp_path)
            etcd.put(layout.ip_pool_key("default-ipv4"), resource("IPPool", "default-ipv4", POOL))
            c.set_felix(wireguardEnabled=True)
            try:
                yield c
            finally:
                c.destroy()
    finally:
        run("ip", "link", "delete", bridge, check=False)
