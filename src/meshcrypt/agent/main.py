"""Entry point of `meshcrypt agent` (the loop is being built in this issue)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)


def run_agent(environ: Mapping[str, str]) -> int:
    log.error("the agent loop is not built yet")
    return 2
