"""The agent loop, bootstrap and wiring: the one place that builds real objects."""
