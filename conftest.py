"""Shared fixtures for falsifiers and tests (tiny random models arrive with aprlib I/O)."""

pytest_plugins = ["pytester"]
