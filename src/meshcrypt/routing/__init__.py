"""Reconcilers for meshcrypt's policy routing table and its routing rule."""
