"""Vyper sources of the contracts the integration tests deploy, and their compiler (compile.py)."""
