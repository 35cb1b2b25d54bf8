"""Frozen values shared by every layer: keys, addresses, routes, rules, configuration, messages."""
