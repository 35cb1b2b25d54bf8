"""The operator commands' argument handling and failures that need no etcd and no root."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshcrypt.cli.main import build_parser, main, named_command
from meshcrypt.cli.status import endpoints, node_name

UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1


def test_commands_are_registered() -> None:
    help_text = build_parser().format_help()
    for command in ("status", "doctor", "config", "node"):
        assert command in help_text


def test_only_the_named_command_is_loaded() -> None:
    assert named_command(["--log-level", "DEBUG", "agent", "--help"]) == "agent"
    assert named_command(["lab", "exec", "node1", "meshcrypt", "status"]) == "lab"
    assert named_command(["--version"]) is None
    # `meshcrypt agent` starts without the operator commands' modules (and their imports).
    probe = (
        "import sys, meshcrypt.cli.main as m; m.build_parser(m.named_command(['agent']));"
        "print(sorted(n for n in sys.modules if n.startswith(('meshcrypt.cli.', 'meshcrypt.ops',"
        " 'meshcrypt.lab'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "meshcrypt.cli.agent" in loaded
    for other in ("meshcrypt.cli.status", "meshcrypt.cli.lab", "meshcrypt.ops", "meshcrypt.lab"):
        assert f"'{other}" not in loaded, loaded
    help_text = build_parser("agent").format_help()
    assert "agent" in help_text and "doctor" not in help_text


def test_defaults_come_from_the_environment() -> None:
    args = build_parser().parse_args(["status"])
    assert endpoints(args, {}) == ["http://127.0.0.1:2379"]
    assert endpoints(args, {"ETCD_ENDPOINTS": "http://e1:2379, http://e2:2379"}) == [
        "http://e1:2379",
        "http://e2:2379",
    ]
    assert node_name(args, {"NODENAME": "n7"}) == "n7"
    args = build_parser().parse_args(["status", "--node", "x", "--etcd-endpoints", "http://e:1"])
    assert node_name(args, {"NODENAME": "n7"}) == "x"
    assert endpoints(args, {"ETCD_ENDPOINTS": "http://other:2"}) == ["http://e:1"]


def test_invalid_value_is_rejected_before_any_write(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "set", "WireguardMTU", "99999", "--etcd-endpoints", UNREACHABLE])
    assert code == 2
    err = capsys.readouterr().err
    assert "WireguardMTU" in err and "between 68 and 65535" in err


def test_unknown_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "get", "NoSuchThing", "--etcd-endpoints", UNREACHABLE]) == 2
    assert "unknown parameter 'NoSuchThing'" in capsys.readouterr().err


def test_bad_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "list", "--etcd-endpoints", "ftp://x"]) == 2
    assert "ETCD_ENDPOINTS" in capsys.readouterr().err


def test_config_and_node_without_action_print_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 2
    assert "get" in capsys.readouterr().out
    assert main(["node"]) == 2


def test_unreachable_etcd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "get", "WireguardMTU", "--etcd-endpoints", UNREACHABLE]) == 1
    assert "cannot read the configuration" in capsys.readouterr().err
    assert main(["node", "list", "--etcd-endpoints", UNREACHABLE]) == 1
    capsys.readouterr()
    assert main(["status", "--json", "--etcd-endpoints", UNREACHABLE, "--node", "n1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["node"] == "n1"
    assert doc["datastore"]["reachable"] is False
    assert main(["doctor", "--etcd-endpoints", UNREACHABLE]) == 1
    assert "FAIL  datastore" in capsys.readouterr().out
