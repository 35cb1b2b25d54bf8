"""Operator tools: status, doctor, configuration and node listings."""
