"""Interlock services, one package each."""
