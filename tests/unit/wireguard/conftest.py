from __future__ import annotations

import pytest

from meshcrypt.model.net import IPFamily
from tests.unit.wireguard.harness import Harness


@pytest.fixture(params=list(IPFamily), ids=lambda f: f.label)
def family(request: pytest.FixtureRequest) -> IPFamily:
    value: IPFamily = request.param
    return value


@pytest.fixture
def h(family: IPFamily) -> Harness:
    return Harness(family)
