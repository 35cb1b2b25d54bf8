"""Integration tests: real network namespaces, wireguard-go and etcd (root only)."""
