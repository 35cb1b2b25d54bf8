"""The error a fake raises when the code under test breaks a rule the real kernel would not catch.

It derives from AssertionError, never from MeshcryptError, so a manager that retries or swallows its own
errors cannot hide it: the test fails at the offending call.
"""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """The caller used a port in a way the reference implementation forbids (a bug in the caller)."""
