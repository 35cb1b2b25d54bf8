"""The `meshcrypt` command line: one module per subcommand, registered by `main.COMMAND_MODULES`."""

from __future__ import annotations

import argparse

# What each subcommand module's `register(subparsers)` receives.
Subparsers = argparse._SubParsersAction
