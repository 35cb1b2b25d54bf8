"""The agent's own Prometheus metrics, beside Calico's `wireguard_*` ones.

* `meshcrypt_event_to_programmed_seconds` (histogram): from the first datastore change of a batch to
  the end of the apply that programmed it;
* `meshcrypt_full_resync_seconds` (histogram): duration of applies that re-read the kernel;
* `meshcrypt_wireguard_peers_programmed{family}` (gauge): remote nodes programmed as peers;
* `meshcrypt_nodes_skipped{family,reason}` (gauge): nodes not programmed because their key is shared
  with another node (`shared_key`), and datastore keys skipped as invalid (`invalid_resource`);
* `meshcrypt_apply_errors_total` is not kept: a failing apply is visible as readiness going down and
  in the log, with its retry delay.

Gauges are computed on the agent's loop after each apply (never while the dataplane thread runs), so
a scrape reads a consistent copy. Computing them costs nothing that grows with the cluster: the
managers keep their counts up to date as nodes change.
"""

from __future__ import annotations

from meshcrypt.agent.cluster import ClusterView
from meshcrypt.agent.dataplane import Dataplane
from meshcrypt.model.metrics import Histogram, MetricFamily, Sample

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RESYNC_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class AgentMetrics:
    def __init__(self) -> None:
        self.event_to_programmed = Histogram(
            "meshcrypt_event_to_programmed_seconds",
            "time from a datastore change to the dataplane programmed with it",
            LATENCY_BUCKETS,
        )
        self.full_resync = Histogram(
            "meshcrypt_full_resync_seconds",
            "duration of dataplane applies that re-read and corrected the kernel state",
            RESYNC_BUCKETS,
        )
        self._peers: tuple[Sample, ...] = ()
        self._skipped: tuple[Sample, ...] = ()

    def update_from(self, dataplane: Dataplane, cluster: ClusterView) -> None:
        peers: list[Sample] = []
        skipped: list[Sample] = []
        invalid_nodes = sum(1 for key in cluster.invalid_keys if "/nodes/" in key)
        for family, manager in sorted(dataplane.managers.items()):
            labels = (("family", family.label),)
            if not manager.enabled:
                continue
            # The local node is never a peer and never owns a key in a manager's cache.
            peers.append(Sample(labels, float(manager.programmed_peers)))
            shared = manager.shared_key_count
            skipped.append(Sample((*labels, ("reason", "shared_key")), float(shared)))
            skipped.append(Sample((*labels, ("reason", "invalid_resource")), float(invalid_nodes)))
        self._peers = tuple(peers)
        self._skipped = tuple(skipped)

    def collect(self) -> list[MetricFamily]:
        return [
            self.event_to_programmed.family(),
            self.full_resync.family(),
            MetricFamily(
                "meshcrypt_wireguard_peers_programmed",
                "gauge",
                "remote nodes programmed as WireGuard peers",
                self._peers,
            ),
            MetricFamily(
                "meshcrypt_nodes_skipped",
                "gauge",
                "nodes not programmed: key shared with another node, or resource invalid",
                self._skipped,
            ),
        ]
