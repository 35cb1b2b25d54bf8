"""The per-family WireGuard manager: node cache, peer planning and the apply phases."""
