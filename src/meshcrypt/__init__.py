"""meshcrypt: a node agent that encrypts cluster traffic between nodes with WireGuard."""

__version__ = "0.1.0"
