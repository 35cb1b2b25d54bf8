"""What meshcrypt is measured against: the least work that programs the same peers and routes.

* `floor`: one UAPI `set` carrying every peer, written straight to wireguard-go's socket, plus one
  `ip -batch` for the routes — nothing can program the same state with less work.
* `syncconf`: what a shell script would do: write a `wg` configuration file, `wg syncconf` it and
  `ip -batch` the routes.

Both time only the programming: the device exists and is up (`start_device`) before the clock starts.

* `least_python`: `bench.least_python` run inside the node like the agent, timed from its start to
  its exit — the floor plus what any Python agent must add (interpreter, imports, etcd listing,
  one `json.loads` per key); `overlap=True` sends the peers while the blocks are read.
`Peers` is the configuration: one endpoint and one allowed CIDR per peer, each peer's CIDR routed
through the device in table 1. `uapi` is a raw UAPI exchange, also used to read a device back.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshcrypt.adapters.nodens import SimNode
from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor
from meshcrypt.adapters.wireguard_uapi import socket_path
from meshcrypt.model.keys import Key, PrivateKey

IFACE = "wireguard.cali"
TABLE = 1
PORT = 51820
ROUTE_PROTOCOL = 3  # the agent's default device route protocol (Felix: RTPROT_BOOT)


@dataclass(frozen=True)
class Peers:
    """Peer i: public key `keys[i]`, endpoint `endpoints[i]`:51820, allowed IP `cidrs[i]`."""

    keys: list[Key]
    endpoints: list[str]
    cidrs: list[str]

    @classmethod
    def synthetic(cls, n: int, seed: int = 1) -> Peers:
        """`n` peers with /32s in 10.200/16, endpoints in 10.98/16 and seeded random keys."""
        rng = random.Random(seed)
        return cls(
            keys=[Key(rng.randbytes(32)) for _ in range(n)],
            endpoints=[f"10.98.{i // 250}.{i % 250 + 1}" for i in range(n)],
            cidrs=[f"10.200.{i // 250}.{i % 250 + 1}/32" for i in range(n)],
        )

    def __len__(self) -> int:
        return len(self.keys)

    def route_batch(self) -> str:
        """`ip -batch` input: one device route per peer CIDR in our table."""
        return "".join(
            f"route replace {c} dev {IFACE} table {TABLE} proto {ROUTE_PROTOCOL}\n"
            for c in self.cidrs
        )


def start_device(sim: SimNode, state_dir: Path) -> WireguardGoSupervisor:
    """wireguard-go serving `IFACE` inside `sim`, link up; its supervisor (to stop it)."""
    sup = WireguardGoSupervisor(
        str(state_dir / sim.name), socket_dir=sim.socket_dir, prefix_cmd=sim.nsenter_prefix
    )
    sup.ensure_running(IFACE, 1420)
    sim.run("ip", "link", "set", IFACE, "up")
    return sup


def uapi(sim: SimNode, request: bytes) -> bytes:
    """One UAPI exchange with `sim`'s device (`request` ends with an empty line); the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(socket_path(sim.socket_dir, IFACE))
        s.sendall(request)
        chunks: list[bytes] = []
        tail = b""
        while not (tail.endswith(b"\n\n") and b"errno=" in tail):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("wireguard-go closed the UAPI socket")
            chunks.append(chunk)
            tail = (tail + chunk)[-64:]
    return b"".join(chunks)


def _routes(sim: SimNode, peers: Peers) -> None:
    subprocess.run(
        ["ip", "-n", sim.netns, "-batch", "-"], input=peers.route_batch(), text=True, check=True
    )


def floor(sim: SimNode, peers: Peers) -> float:
    """Seconds for one UAPI set with every peer plus `ip -batch` for the routes."""
    lines = ["set=1", f"private_key={PrivateKey.generate().raw.hex()}", f"listen_port={PORT}"]
    for k, ep, cidr in zip(peers.keys, peers.endpoints, peers.cidrs, strict=True):
        lines += [
            f"public_key={k.raw.hex()}",
            f"endpoint={ep}:{PORT}",
            "replace_allowed_ips=true",
            f"allowed_ip={cidr}",
        ]
    request = ("\n".join(lines) + "\n\n").encode()
    start = time.perf_counter()
    reply = uapi(sim, request)
    assert b"errno=0" in reply, reply[-40:]
    _routes(sim, peers)
    return time.perf_counter() - start


def syncconf(sim: SimNode, peers: Peers, workdir: Path) -> float:
    """Seconds to write a wg configuration file, `wg syncconf` it and `ip -batch` the routes."""
    conf = workdir / f"{sim.name}.conf"  # /tmp is shared with the node's mount namespace
    start = time.perf_counter()
    parts = [
        f"[Interface]\nPrivateKey = {PrivateKey.generate().to_base64()}\nListenPort = {PORT}\n"
    ]
    parts += [
        f"[Peer]\nPublicKey = {k}\nEndpoint = {ep}:{PORT}\nAllowedIPs = {cidr}\n"
        for k, ep, cidr in zip(peers.keys, peers.endpoints, peers.cidrs, strict=True)
    ]
    conf.write_text("".join(parts))
    sim.run("wg", "syncconf", IFACE, str(conf))
    _routes(sim, peers)
    return time.perf_counter() - start


def least_python(sim: SimNode, etcd_url: str, *, overlap: bool) -> float:
    """Seconds from starting `bench.least_python` inside `sim` to its exit."""
    repo = Path(__file__).resolve().parent.parent
    cmd = ["env", f"PYTHONPATH={repo}", sys.executable, "-m", "bench.least_python"]
    cmd += ["--etcd", etcd_url]
    cmd += ["--socket", socket_path("/run/wireguard", IFACE)]
    if overlap:
        cmd.append("--overlap")
    start = time.perf_counter()
    proc = sim.popen(*cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    if proc.wait(timeout=120) != 0:
        raise RuntimeError(f"bench.least_python exited with {proc.returncode}")
    return time.perf_counter() - start
