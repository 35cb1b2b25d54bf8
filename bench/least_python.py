"""The least a Python agent must do for a full resync: a lower bound for `meshcrypt agent`.

Run inside a node whose device already exists and is up (as for the floor). From the interpreter's
start it: imports the etcd adapter the agent uses, lists the Nodes and the IPAM blocks, takes from
each Node its key and address and from each block its CIDR and affinity (one `json.loads` each, no
validation, no calculation), sends one UAPI `set` with every peer and runs one `ip -batch` for the
routes — the floor's programming plus the interpreter, the imports, the listing and the decoding.

`--overlap`: the peers (keys and endpoints) go to wireguard-go from a second thread as soon as the
Nodes are decoded, while the blocks are listed and decoded; their allowed IPs follow in a second
`set` (`update_only`). wireguard-go creates the peers on the other core meanwhile: the best any
ordering of this work can do.

    python -m bench.least_python --etcd URL --socket PATH [--overlap]   # inside the node
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from base64 import b64decode

from meshcrypt.adapters.etcd import EtcdDatastore
from meshcrypt.datastore import layout
from meshcrypt.model.keys import PrivateKey

STARTED = time.time()  # the imports above are the agent's too: phases count from here

PORT = 51820
IFACE = "wireguard.cali"
TABLE = 1
ROUTE_PROTOCOL = 3


def exchange(path: str, request: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    if b"errno=0" not in reply:
        raise RuntimeError(f"UAPI set failed: {reply[-60:]!r}")


def peers_of(nodes: list[bytes]) -> dict[str, tuple[str, str]]:
    """Node name → (public key hex, endpoint address)."""
    found: dict[str, tuple[str, str]] = {}
    for value in nodes:
        doc = json.loads(value)
        key = doc.get("status", {}).get("wireguardPublicKey", "")
        addr = doc.get("spec", {}).get("bgp", {}).get("ipv4Address", "")
        if key and addr:
            found[doc["metadata"]["name"]] = (b64decode(key).hex(), addr.split("/")[0])
    return found


def blocks_of(blocks: list[bytes]) -> dict[str, str]:
    """Node name → its block CIDR."""
    found: dict[str, str] = {}
    for value in blocks:
        doc = json.loads(value)
        affinity = doc.get("affinity") or ""
        if affinity.startswith("host:"):
            found[affinity[5:]] = doc["cidr"]
    return found


def peer_lines(peers: dict[str, tuple[str, str]]) -> str:
    return "".join(f"public_key={k}\nendpoint={ep}:{PORT}\n" for k, ep in peers.values())


def allowed_lines(peers: dict[str, tuple[str, str]], cidrs: dict[str, str]) -> str:
    return "".join(
        f"public_key={peers[n][0]}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip={c}\n"
        for n, c in cidrs.items()
        if n in peers
    )


def routes(cidrs: list[str]) -> None:
    batch = "".join(
        f"route replace {c} dev {IFACE} table {TABLE} proto {ROUTE_PROTOCOL}\n" for c in cidrs
    )
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)


async def run(args: argparse.Namespace) -> None:
    def phase(name: str) -> None:
        if args.phases:
            print(f"{name}: {time.time() - STARTED:.3f} s after the imports", file=sys.stderr)

    store = EtcdDatastore([args.etcd])
    try:
        node_kvs, _ = await store.list_prefix(layout.NODES)
        phase("nodes listed")
        peers = peers_of([kv.value for kv in node_kvs])
        phase("nodes decoded")
        head = f"set=1\nprivate_key={PrivateKey.generate().raw.hex()}\nlisten_port={PORT}\n"
        sender: threading.Thread | None = None
        if args.overlap:
            request = (head + peer_lines(peers) + "\n").encode()
            sender = threading.Thread(target=exchange, args=(args.socket, request))
            sender.start()
        block_kvs, _ = await store.list_prefix(layout.IPAM_BLOCKS)
        phase("blocks listed")
        cidrs = blocks_of([kv.value for kv in block_kvs])
        phase("blocks decoded")
        if sender is not None:
            allowed = allowed_lines(peers, cidrs)
            sender.join()
            exchange(args.socket, ("set=1\n" + allowed + "\n").encode())
        else:
            body = "".join(
                f"public_key={k}\nendpoint={ep}:{PORT}\nreplace_allowed_ips=true\n"
                f"allowed_ip={cidrs[n]}\n"
                for n, (k, ep) in peers.items()
                if n in cidrs
            )
            exchange(args.socket, (head + body + "\n").encode())
        phase("peers programmed")
        routes([c for n, c in cidrs.items() if n in peers])
        phase("routes programmed")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--overlap", action="store_true")
    parser.add_argument("--phases", action="store_true", help="print phase times to stderr")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
