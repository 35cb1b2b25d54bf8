"""Behaviour checks shared by the fakes and the real adapters, so the fakes cannot drift."""
