"""Host encryption's firewall part: mark incoming WireGuard packets for the reverse-path check.

Why (`reference-behavior.md` §1.1 raw PREROUTING, §2.6, §4.5). The routing rule
`not from all fwmark M/M lookup <table>` sends every *unmarked* packet's route lookup to the
WireGuard table. With host encryption that table routes the other nodes' host addresses through the
WireGuard device. Strict reverse-path filtering (`rp_filter=1`) checks an incoming packet by looking
up the route back to its source: for the encrypted UDP packets arriving on eth0 from node B, that
lookup (unmarked) finds "B via wireguard.cali", which is not the interface the packet came in on, so
the kernel drops them — and no handshake ever completes. Marking those packets with the WireGuard
mark bit and setting `net.ipv4.conf.all.src_valid_mark=1` (the kernel then uses the packet's mark in
the reverse-path lookup) makes the lookup skip the WireGuard table and find "B via eth0" in main.

The sysctl is written by the WireGuard manager (`wireguard.manager.SRC_VALID_MARK`, IPv4 with host
encryption, before the link is ensured), as Felix does; IPv6 has no such sysctl and no kernel
reverse-path filter, so marking IPv6 packets only keeps the families alike.

What is marked — a deliberate narrowing of Felix. Felix's `cali-wireguard-incoming-mark` chain marks
*every* packet entering on an interface other than `lo`, the WireGuard devices and the workload
interfaces (`cali+`). That also steers forwarded traffic arriving from outside into the main table,
i.e. unencrypted, and it relies on knowing every workload interface prefix, which an etcd-only agent
does not (a pod interface missing from the list would have its traffic routed around WireGuard).
meshcrypt marks only what the reverse-path problem is about: UDP to one of our WireGuard listen
ports, addressed to this host (`fib daddr type local`)::

    table inet meshcrypt {
        chain wireguard-incoming-mark {
            type filter hook prerouting priority raw; policy accept;
            udp dport { 51820, 51821 } fib daddr type local meta mark set meta mark | 0x00100000 ...
        }
    }

Priority raw (−300), like Felix's raw-table chain: before conntrack and before the routing decision.
The mark is OR-ed in, so other bits of the mark survive.

How. The `nft` binary with a script on stdin, as one transaction: `add table` + `delete table` +
the table's full definition replaces whatever was there atomically (there is never a moment without
the rule), and works whether or not the table existed. meshcrypt owns the whole table; nothing else
should put rules in it. `ensure()` is idempotent: when the same ports and mark were applied before
and `nft -j list table` still shows exactly what it showed then, nothing is written (so a periodic
resync costs one listing); anything else (first call, other ports or mark, a tampered or deleted
table) is replaced.
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshcrypt.model.config import FelixConfig
from meshcrypt.model.errors import KernelError, NotSupported

log = logging.getLogger(__name__)

TABLE_FAMILY = "inet"
TABLE_NAME = "meshcrypt"
CHAIN_NAME = "wireguard-incoming-mark"
RULE_COMMENT = "meshcrypt: mark incoming WireGuard for the reverse-path check"
NFT_TIMEOUT_S = 10.0

_TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
_ABSENT_MARKERS = ("No such file or directory", "does not exist")
_UNSUPPORTED_MARKERS = ("Operation not supported", "Protocol not supported")


@dataclass(frozen=True, slots=True)
class MarkSpec:
    """What to mark: UDP to `ports` (sorted, unique), addressed to this host, with bit(s) `mark`."""

    ports: tuple[int, ...]
    mark: int

    @classmethod
    def of(cls, ports: Iterable[int], mark: int) -> MarkSpec:
        unique = tuple(sorted(set(ports)))
        for port in unique:
            if not 1 <= port <= 0xFFFF:
                raise ValueError(f"invalid UDP port {port}")
        if not 0 < mark <= 0xFFFFFFFF:
            raise ValueError(f"invalid firewall mark {mark:#x}")
        return cls(unique, mark)


def ports_to_mark(config: FelixConfig) -> tuple[int, ...]:
    """The listen ports of the enabled families when host encryption is on; () otherwise (then
    `ensure` removes the table). Felix adds its chain only with host encryption too."""
    if not config.wireguard_host_encryption_enabled:
        return ()
    ports = []
    if config.wireguard_enabled:
        ports.append(config.wireguard_listening_port)
    if config.wireguard_enabled_v6:
        ports.append(config.wireguard_listening_port_v6)
    return tuple(sorted(set(ports)))


def render(spec: MarkSpec) -> str:
    """The nft script that (re)defines the table atomically."""
    joined = ", ".join(str(p) for p in spec.ports)
    ports = joined if len(spec.ports) == 1 else f"{{ {joined} }}"  # as nft lists them back
    return (
        f"add table {_TABLE}\n"
        f"delete table {_TABLE}\n"
        f"table {_TABLE} {{\n"
        f"\tchain {CHAIN_NAME} {{\n"
        "\t\ttype filter hook prerouting priority raw; policy accept;\n"
        f"\t\tudp dport {ports} fib daddr type local"
        f" meta mark set meta mark | {spec.mark:#010x} comment {json.dumps(RULE_COMMENT)}\n"
        "\t}\n"
        "}\n"
    )


def normalise(listing: object) -> list[object]:
    """`nft -j list table …` output without the metainfo object and the rule/chain handles, which
    change on every rewrite without meaning anything."""
    if not isinstance(listing, dict) or not isinstance(listing.get("nftables"), list):
        raise ValueError("not nft JSON output")
    items: list[object] = []
    for item in listing["nftables"]:
        if not isinstance(item, dict) or "metainfo" in item:
            continue
        items.append(
            {
                kind: (
                    {k: v for k, v in body.items() if k != "handle"}
                    if isinstance(body, dict)
                    else body
                )
                for kind, body in item.items()
            }
        )
    return items


class NftIncomingMark:
    """The meshcrypt nftables table, in the current namespace or through a command prefix.

    `netns=NAME` runs nft as `ip netns exec NAME nft …`; `prefix_cmd` runs it behind any other
    prefix (e.g. a simulated node's `nsenter` command). Not thread-safe; call from one thread (the
    agent's dataplane thread).
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        prefix_cmd: Sequence[str] = (),
        nft: str = "nft",
        timeout: float = NFT_TIMEOUT_S,
    ) -> None:
        if netns is not None and prefix_cmd:
            raise ValueError("give netns or prefix_cmd, not both")
        self._prefix = ("ip", "netns", "exec", netns) if netns is not None else tuple(prefix_cmd)
        self._nft = nft
        self._timeout = timeout
        self._where = f" in netns {netns}" if netns else ""
        self._applied: tuple[MarkSpec, list[object]] | None = None

    # ---- public --------------------------------------------------------------------------------

    def ensure(self, ports: Iterable[int], mark: int) -> bool:
        """Mark UDP to `ports` addressed to this host with `mark`; True when the table was written.

        No ports means nothing to mark: the table is removed. Raises ValueError for a bad port or
        mark, NotSupported without nft or nf_tables, KernelError when nft fails.
        """
        spec = MarkSpec.of(ports, mark)
        if not spec.ports:
            return self.remove()
        if self._applied is not None and self._applied[0] == spec:
            if self.listing() == self._applied[1]:
                return False
            log.info("nftables table %s changed behind our back; rewriting it", _TABLE)
        self._run(["-f", "-"], f"write table {_TABLE}", stdin=render(spec))
        written = self.listing()
        if written is None:  # pragma: no cover - nft said it worked
            raise KernelError(f"nft table {_TABLE} missing right after writing it{self._where}")
        self._applied = (spec, written)
        log.info(
            "Marking incoming WireGuard UDP to port(s) %s with %#x (nftables %s)",
            ", ".join(map(str, spec.ports)),
            spec.mark,
            _TABLE,
        )
        return True

    def remove(self) -> bool:
        """Delete the table; True when there was one. Idempotent."""
        self._applied = None
        if self.listing() is None:
            return False
        # add + delete in one transaction: no error even if someone deleted it meanwhile.
        script = f"add table {_TABLE}\ndelete table {_TABLE}\n"
        self._run(["-f", "-"], f"delete table {_TABLE}", stdin=script)
        log.info("Removed nftables table %s", _TABLE)
        return True

    def listing(self) -> list[object] | None:
        """The table's normalised JSON listing, or None when there is no table."""
        out = self._run(["-j", "list", "table", TABLE_FAMILY, TABLE_NAME], "list", absent_ok=True)
        if out is None:
            return None
        try:
            return normalise(json.loads(out))
        except ValueError as exc:
            raise KernelError(f"nft list table {_TABLE}: unexpected output: {exc}") from exc

    # ---- plumbing ------------------------------------------------------------------------------

    def _run(
        self, args: list[str], what: str, *, stdin: str | None = None, absent_ok: bool = False
    ) -> str | None:
        cmd = [*self._prefix, self._nft, *args]
        try:
            done = subprocess.run(
                cmd,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise NotSupported(f"nft {what}: {cmd[0]} not found", errno.ENOENT) from exc
        except subprocess.TimeoutExpired as exc:
            raise KernelError(
                f"nft {what}{self._where}: no answer in {self._timeout} s", errno.ETIMEDOUT
            ) from exc
        if done.returncode == 0:
            return done.stdout
        text = done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}"
        if absent_ok and any(marker in text for marker in _ABSENT_MARKERS):
            return None
        if any(marker in text for marker in _UNSUPPORTED_MARKERS):
            raise NotSupported(f"nft {what}{self._where}: {text}", errno.EOPNOTSUPP)
        raise KernelError(f"nft {what}{self._where}: {text}", errno.EIO)
