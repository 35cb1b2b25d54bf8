"""`meshcrypt agent`: build the real adapters, wire them to the `Agent`, serve health and metrics.

This is the one place that builds real objects. Bad settings never stop the agent: each is logged
with what is used instead.

Start-up order: the backend; a datastore client on every `ETCD_ENDPOINTS` entry; one read of the
FelixConfigurations (environment only when etcd does not answer); with host encryption (or
`FELIX_DBG_WGBOOTSTRAP`), the WireGuard bootstrap, whose chosen endpoints the client then uses;
then the agent, with the watchdog whose last resort removes WireGuard and goes back to every
endpoint (`meshcrypt.agent.bootstrap`).

SIGTERM and SIGINT stop the loop and leave the dataplane in place — the device, its peers, routes
and rule keep carrying encrypted traffic, and wireguard-go (userspace backend) keeps running in its
own process group — so a restarted agent adopts the device and its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import faulthandler
import gc
import logging
import os
import signal
from collections.abc import Mapping
from ipaddress import IPv4Interface, IPv6Interface

from meshcrypt.adapters import autodetect
from meshcrypt.adapters.backend import Backend, BackendMode, select_backend
from meshcrypt.adapters.etcd import EtcdDatastore
from meshcrypt.adapters.http_endpoints import Handler, serve
from meshcrypt.adapters.netlink import LinkMonitor, RtNetlink
from meshcrypt.adapters.nft_mark import NftIncomingMark
from meshcrypt.adapters.sysfs import FileSysfs
from meshcrypt.adapters.wireguard_go import DEFAULT_STATE_DIR, WireguardGoSupervisor
from meshcrypt.agent.bootstrap import (
    Bootstrapper,
    DatastoreWatchdog,
    SwitchableDatastore,
    bootstrap_applies,
    read_bootstrap_config,
)
from meshcrypt.agent.loop import Agent, HostEncryptionParts, LastResort, NodeAddresses
from meshcrypt.agent.settings import AgentSettings, load_settings
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.config_parse import resolve
from meshcrypt.model.dataplane import Device
from meshcrypt.model.errors import ConfigError, KernelError, MeshcryptError
from meshcrypt.model.metrics import render
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.metrics import WireguardMetrics
from meshcrypt.wireguard.mtu import MtuDetector

log = logging.getLogger(__name__)

STATE_DIR_ENV = "MESHCRYPT_STATE_DIR"
HEALTH_HOST = "127.0.0.1"  # Felix's HealthHost default is localhost
METRICS_HOST = "0.0.0.0"  # Felix's PrometheusMetricsHost default: all addresses


def run_agent(environ: Mapping[str, str]) -> int:
    settings = load_settings(environ)
    for error in settings.errors:
        log.error("%s; using the default instead", error)
    state_dir = environ.get(STATE_DIR_ENV, "").strip() or DEFAULT_STATE_DIR
    # Start-up decodes every datastore key into long-lived objects; with the default thresholds
    # the cyclic collector walks that growing heap over and over (~0.3 s at 10,000 nodes). The
    # agent makes few reference cycles, so collect less often.
    gc.set_threshold(50_000, 20, 100)
    # `kill -USR1 <pid>` prints every thread's stack to the log: for explaining a stuck agent.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return asyncio.run(_run(settings, state_dir))
    except KeyboardInterrupt:
        return 0


def _ip_setting(value: str, family: IPFamily, fallback: str) -> autodetect.IPSetting:
    try:
        return autodetect.parse_ip_setting(value, family)
    except ConfigError as exc:
        log.error("%s; using %r instead", exc, fallback)
        return autodetect.parse_ip_setting(fallback, family)


def _address_source(settings: AgentSettings) -> NodeAddresses:
    """Resolve IP / IP6 (autodetect runs each time registration is attempted)."""
    found: dict[IPFamily, IPv4Interface | IPv6Interface | None] = {}
    for family, value, fallback in (
        (IPFamily.V4, settings.ip, "autodetect"),
        (IPFamily.V6, settings.ip6, "none"),
    ):
        setting = _ip_setting(value, family, fallback)
        if setting == autodetect.AUTODETECT:
            try:
                found[family] = autodetect.autodetect(family)
            except KernelError as exc:
                log.warning("Cannot autodetect the %s address: %s", family.label, exc)
                found[family] = None
        else:
            assert not isinstance(setting, str)
            found[family] = setting
    v4, v6 = found[IPFamily.V4], found[IPFamily.V6]
    return NodeAddresses(
        ipv4=v4 if isinstance(v4, IPv4Interface) else None,
        ipv6=v6 if isinstance(v6, IPv6Interface) else None,
    )


def _backend(settings: AgentSettings, env_config: FelixConfig, state_dir: str) -> Backend:
    try:
        mode = BackendMode.parse(settings.backend)
    except ConfigError as exc:
        log.error("%s; using auto", exc)
        mode = BackendMode.AUTO
    names = (env_config.wireguard_interface_name, env_config.wireguard_interface_name_v6)
    return select_backend(mode, interfaces=names, supervisor=WireguardGoSupervisor(state_dir))


class _Servers:
    """Health (always) and metrics (when enabled) HTTP endpoints, moved when their port changes."""

    def __init__(self, agent: Agent, backend: Backend) -> None:
        self.agent = agent
        self._wireguard = backend.wireguard()
        self._wg_metrics = WireguardMetrics(agent.nodename, self._devices)
        self._health: tuple[int, asyncio.Server] | None = None
        self._metrics: tuple[int, asyncio.Server] | None = None
        self._config = FelixConfig()

    def _devices(self) -> list[Device]:
        devices = []
        for manager in self.agent.dataplane.managers.values():
            if manager.enabled:
                with contextlib.suppress(MeshcryptError):
                    devices.append(self._wireguard.device(manager.config.interface_name))
        return devices

    def _liveness(self) -> tuple[int, str, str]:
        return 200, "text/plain", "live\n"

    def _readiness(self) -> tuple[int, str, str]:
        if self.agent.ready:
            return 200, "text/plain", "ready\n"
        if self.agent.holding:
            why = "WireGuard removed until the datastore answers"
        elif not self.agent.syncer.synced.is_set():
            why = "datastore not in sync"
        else:
            why = "apply failing"
        return 503, "text/plain", f"not ready: {why}\n"

    def _metrics_body(self) -> tuple[int, str, str]:
        families = self.agent.metrics.collect()
        if self._config.prometheus_wireguard_metrics_enabled:
            families = self._wg_metrics.collect() + families
        return 200, "text/plain; version=0.0.4", render(families)

    async def update(self, config: FelixConfig) -> None:
        self._config = config
        health_port = config.health_port if config.health_enabled else None
        self._health = await self._move(
            self._health,
            health_port,
            HEALTH_HOST,
            {"/liveness": self._liveness, "/readiness": self._readiness},
        )
        metrics_port = config.prometheus_metrics_port if config.prometheus_metrics_enabled else None
        self._metrics = await self._move(
            self._metrics, metrics_port, METRICS_HOST, {"/metrics": self._metrics_body}
        )

    @staticmethod
    async def _move(
        current: tuple[int, asyncio.Server] | None,
        port: int | None,
        host: str,
        routes: Mapping[str, Handler],
    ) -> tuple[int, asyncio.Server] | None:
        if current is not None and current[0] == port:
            return current
        if current is not None:
            current[1].close()
            await current[1].wait_closed()
        if port is None:
            return None
        try:
            server = await serve(host, port, routes)
        except OSError as exc:
            log.error("Cannot serve %s on %s:%d: %s", ", ".join(routes), host, port, exc)
            return None
        log.info("Serving %s on %s:%d", ", ".join(routes), host, port)
        return port, server

    async def close(self) -> None:
        await self._move(self._health, None, HEALTH_HOST, {})
        await self._move(self._metrics, None, METRICS_HOST, {})
        self._health = self._metrics = None
        self._wireguard.close()


def _mtu_detector() -> MtuDetector | None:
    try:
        return MtuDetector(RtNetlink())
    except KernelError as exc:
        log.warning("Cannot read the host's links for MTU auto-detection (%s); MTU left alone", exc)
        return None


def _watch_links(loop: asyncio.AbstractEventLoop, agent: Agent) -> LinkMonitor | None:
    try:
        monitor = LinkMonitor()
    except KernelError as exc:
        log.warning("No link events (%s); link changes are noticed at the next resync", exc)
        return None

    def readable() -> None:
        try:
            events = monitor.read_events()
        except KernelError as exc:
            if exc.errno == errno.ENOBUFS:
                agent.on_link_events_lost()
                return
            log.warning("Reading link events failed: %s", exc)
            return
        for event in events:
            agent.on_link_event(event.name, event.ifindex, event.up, event.present)

    loop.add_reader(monitor.fileno(), readable)
    return monitor


async def _bootstrap(
    settings: AgentSettings, backend: Backend, datastore: SwitchableDatastore
) -> tuple[Bootstrapper, LastResort]:
    """Run the start-up bootstrap when it applies; the bootstrapper (for the watchdog) and the
    watchdog's last resort."""
    config = await read_bootstrap_config(datastore, settings.nodename, settings.env_layer)
    bootstrapper = Bootstrapper(
        node=settings.nodename,
        config=config,
        endpoints=settings.etcd_endpoints,
        netlink=backend.netlink,
        wireguard=backend.wireguard,
        force=settings.bootstrap_forced,
    )
    if bootstrap_applies(config, force=settings.bootstrap_forced):
        outcome = await bootstrapper.run(datastore)
        if outcome.endpoints != settings.etcd_endpoints:
            await datastore.replace(EtcdDatastore(list(outcome.endpoints)))

    async def last_resort() -> bool:
        outcome = await bootstrapper.last_resort(datastore)
        if outcome.removals:
            log.warning("Retrying with every etcd endpoint: %s", ", ".join(outcome.endpoints))
        await datastore.replace(EtcdDatastore(list(outcome.endpoints)))
        return bool(outcome.removals)

    return bootstrapper, last_resort


async def _run(settings: AgentSettings, state_dir: str) -> int:
    loop = asyncio.get_running_loop()
    env_config = resolve(settings.env_layer)
    log.info(
        "meshcrypt agent starting: node %s, etcd %s, pid %d",
        settings.nodename,
        ",".join(settings.etcd_endpoints),
        os.getpid(),
    )
    backend = await loop.run_in_executor(None, _backend, settings, env_config, state_dir)
    datastore = SwitchableDatastore(EtcdDatastore(list(settings.etcd_endpoints)))
    bootstrapper, last_resort = await _bootstrap(settings, backend, datastore)
    agent = Agent(
        settings.nodename,
        datastore,
        backend,
        FileSysfs(),
        addresses=lambda: _address_source(settings),
        env_layer=settings.env_layer,
        mtu_detector=_mtu_detector(),
        host_encryption=HostEncryptionParts(
            incoming_mark=NftIncomingMark(),
            watchdog=DatastoreWatchdog(settings.bootstrap_timeout),
            last_resort=last_resort,
        ),
    )
    servers = _Servers(agent, backend)
    await servers.update(env_config)
    tasks: set[asyncio.Task[None]] = set()

    def config_changed(config: FelixConfig) -> None:
        bootstrapper.config = config  # the last resort acts on the families enabled now
        task = loop.create_task(servers.update(config))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    agent.on_config_change.append(config_changed)
    monitor = _watch_links(loop, agent)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    finally:
        log.info("meshcrypt agent stopping; the dataplane stays as it is")
        if monitor is not None:
            loop.remove_reader(monitor.fileno())
            monitor.close()
        await servers.close()
        await datastore.close()
    return 0
