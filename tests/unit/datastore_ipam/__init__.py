"""IPAM block claims, tunnel addresses, node registration, key publication and IP autodetection."""
