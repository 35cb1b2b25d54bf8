"""The lab's state file (`<lab dir>/lab.json`): everything `lab up` created, written after each step.

`lab up` saves the state after every namespace, link and process it makes, so a lab that crashes half
way still names what it left behind; `lab down` reads it (and scans for what it may not name). Processes
are recorded with their start time, so a PID that was reused meanwhile is never signalled.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from meshcrypt.adapters.lab_proc import ProcessId
from meshcrypt.lab.config import LabConfig, LabError

STATE_FILE: Final = "lab.json"
VERSION: Final = 1


@dataclass
class NodeRecord:
    name: str
    index: int
    netns: str
    host_ifname: str
    addresses: list[str]  # underlay, CIDR form (192.168.50.11/24), one per family
    holder: ProcessId | None = None
    blocks: list[str] = field(default_factory=list)
    agent: ProcessId | None = None
    health_port: int | None = None  # the agent's /readiness, when its health endpoint is on


@dataclass
class PodRecord:
    name: str
    node: str
    netns: str
    ifname: str  # the host end, in the node
    addresses: list[str] = field(default_factory=list)  # without prefix length


@dataclass
class EtcdRecord:
    data_dir: str
    log: str
    client_urls: list[str]
    node_endpoint: str  # what the agents in the nodes use
    host_endpoint: str  # loopback: what commands on the host use
    peer_url: str
    process: ProcessId | None = None


@dataclass
class LabState:
    dir: Path
    config: LabConfig
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    bridge: str | None = None
    guard: str | None = None
    etcd: EtcdRecord | None = None
    nodes: list[NodeRecord] = field(default_factory=list)
    pods: list[PodRecord] = field(default_factory=list)

    # ---- files of the lab ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def agent_log(self, node: str) -> Path:
        return agent_log(self.dir, node)

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r} in the lab (nodes: {', '.join(self.node_names())})")

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def pods_of(self, node: str) -> list[PodRecord]:
        return [p for p in self.pods if p.node == node]

    def find_pod(self, name: str) -> PodRecord | None:
        return next((p for p in self.pods if p.name == name), None)

    # ---- saving and loading ----------------------------------------------------------------------

    def save(self) -> None:
        """Write the state atomically (a crash leaves the old or the new file, never half of one)."""
        doc = {
            "version": VERSION,
            "created": self.created,
            "config": self.config.to_json(),
            "bridge": self.bridge,
            "guard": self.guard,
            "etcd": None if self.etcd is None else _plain(self.etcd.__dict__),
            "nodes": [_plain(n.__dict__) for n in self.nodes],
            "pods": [_plain(p.__dict__) for p in self.pods],
        }
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    @classmethod
    def load(cls, lab_dir: Path) -> LabState | None:
        """The lab recorded in `lab_dir`, None when there is no state file; LabError when the file
        cannot be read."""
        path = lab_dir / STATE_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read the lab state {path}: {exc}") from exc
        try:
            if doc.get("version") != VERSION:
                raise LabError(f"{path}: unknown state version {doc.get('version')!r}")
            etcd = doc.get("etcd")
            return cls(
                dir=lab_dir,
                config=LabConfig.from_json(doc["config"]),
                created=str(doc.get("created", "")),
                bridge=doc.get("bridge"),
                guard=doc.get("guard"),
                etcd=None if etcd is None else EtcdRecord(**_with_process(etcd, "process")),
                nodes=[NodeRecord(**_with_process(n, "holder", "agent")) for n in doc["nodes"]],
                pods=[PodRecord(**p) for p in doc["pods"]],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise LabError(f"{path} is not a lab state file: {exc!r}") from exc


def agent_log(lab_dir: Path, node: str) -> Path:
    return lab_dir / f"agent-{node}.log"


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {"pid": v.pid, "start_time": v.start_time} if isinstance(v, ProcessId) else v
        for k, v in fields.items()
    }


def _with_process(doc: dict[str, Any], *names: str) -> dict[str, Any]:
    out = dict(doc)
    for name in names:
        value = out.get(name)
        out[name] = (
            None if value is None else ProcessId(int(value["pid"]), int(value["start_time"]))
        )
    return out
