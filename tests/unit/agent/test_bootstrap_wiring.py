"""What the agent's start-up feeds the bootstrap: the configuration read once before the agent
syncs, and the datastore client the watchdog rebuilds."""

from __future__ import annotations

import asyncio

import pytest

from meshcrypt.agent.bootstrap import READ_ATTEMPTS, SwitchableDatastore, read_bootstrap_config
from meshcrypt.agent.settings import load_settings
from meshcrypt.datastore import layout
from meshcrypt.fakes import DatastoreOp, FakeDatastore
from meshcrypt.model.errors import DatastoreUnavailable
from tests.unit.agent.helpers import dump, felix_doc, run


def _store(**layers: dict[str, object]) -> FakeDatastore:
    ds = FakeDatastore()
    for arg, spec in layers.items():
        name = arg.replace("_", ".")
        ds.server_put(layout.felix_configuration_key(name), dump(felix_doc(name, **spec)))
    return ds


def test_configuration_layers_default_node_and_environment() -> None:
    ds = _store(
        default={"wireguardEnabled": True, "wireguardHostEncryptionEnabled": True},
        node_n1={"wireguardEnabledV6": True, "wireguardListeningPort": 1111},
        node_n2={"wireguardHostEncryptionEnabled": False},
    )
    config = run(lambda: read_bootstrap_config(ds, "n1", {"wireguard_listening_port": 2222}))
    assert config.wireguard_enabled and config.wireguard_enabled_v6
    assert config.wireguard_host_encryption_enabled  # node.n2 is not ours
    assert config.wireguard_listening_port == 2222  # the environment wins


async def _no_wait(_seconds: float) -> None:
    return None


def test_unreachable_datastore_means_environment_only(caplog: pytest.LogCaptureFixture) -> None:
    ds = _store(default={"wireguardEnabled": True, "wireguardHostEncryptionEnabled": True})
    ds.go_down()
    env = {"wireguard_enabled": True}
    config = run(lambda: read_bootstrap_config(ds, "n1", env, sleep=_no_wait))
    assert config.wireguard_enabled and not config.wireguard_host_encryption_enabled
    assert ds.calls[DatastoreOp.LIST] == READ_ATTEMPTS
    assert "uses the environment only" in caplog.text


def test_one_failed_read_is_retried_and_the_datastore_still_decides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = _store(default={"wireguardEnabled": True, "wireguardHostEncryptionEnabled": True})
    ds.fail_next(DatastoreOp.LIST)
    config = run(lambda: read_bootstrap_config(ds, "n1", {}, sleep=_no_wait))
    assert config.wireguard_enabled and config.wireguard_host_encryption_enabled
    assert ds.calls[DatastoreOp.LIST] == 2
    assert "attempt 1 of 3" in caplog.text
    assert "uses the environment only" not in caplog.text


def test_an_invalid_field_is_skipped_and_the_rest_applies(caplog: pytest.LogCaptureFixture) -> None:
    ds = _store(default={"wireguardHostEncryptionEnabled": True, "wireguardMTU": "huge"})
    config = run(lambda: read_bootstrap_config(ds, "n1", {}))
    assert config.wireguard_host_encryption_enabled
    assert (
        "Ignoring a field of /calico/resources/v3/projectcalico.org/felixconfigurations/default"
        in (caplog.text)
    )


def test_switchable_datastore_replaces_and_closes_the_old_client() -> None:
    async def main() -> None:
        old, new = FakeDatastore(), FakeDatastore()
        old.server_put("/k", b"old")
        new.server_put("/k", b"new")
        ds = SwitchableDatastore(old)
        got = await ds.get("/k")
        assert got is not None and got.value == b"old"
        watch = ds.watch_prefix("/", 0)
        reading = asyncio.ensure_future(anext(watch))  # a live watch on the old client
        await asyncio.sleep(0)
        await ds.replace(new)
        with pytest.raises(DatastoreUnavailable):
            await reading  # it ends: the syncer lists again, through the new client
        assert ds.inner is new
        got = await ds.get("/k")
        assert got is not None and got.value == b"new"
        assert await ds.txn({"/k": got.mod_revision}, {"/k": b"written"})
        assert new.snapshot()["/k"] == b"written"
        with pytest.raises(RuntimeError, match="closed"):
            await old.get("/k")  # the old client was closed
        await ds.close()

    run(main)


@pytest.mark.parametrize(
    ("environ", "timeout", "forced", "errors"),
    [
        ({}, 30.0, False, 0),
        ({"MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT": "5"}, 5.0, False, 0),
        ({"MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT": "0"}, 0.0, False, 0),
        ({"MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT": "soon"}, 30.0, False, 1),
        ({"FELIX_DBG_WGBOOTSTRAP": ""}, 30.0, True, 0),
    ],
)
def test_settings(environ: dict[str, str], timeout: float, forced: bool, errors: int) -> None:
    settings = load_settings({"NODENAME": "n1", **environ})
    assert settings.bootstrap_timeout == timeout
    assert settings.bootstrap_forced is forced
    assert len(settings.errors) == errors
