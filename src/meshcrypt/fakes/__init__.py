"""Stateful in-memory fakes of the ports, with one-shot fault injection, for tests."""
