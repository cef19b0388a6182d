"""provable's version, for ``pv --version`` and evidence; a module of its own so the CLI can
name it without importing the package root (which re-exports the whole API)."""

__version__ = "0.1.0"
