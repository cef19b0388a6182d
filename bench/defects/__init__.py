"""The defect-injection benchmark: does the suite catch what it claims? (``python -m
bench.defects``). ``registry`` holds the entry type, ``catalogue`` the entries,
``injections`` how they get in, ``runner`` what runs and what is recorded."""

from bench.defects.registry import CATALOGUE, DESIGN_ROWS, Defect, register

__all__ = ["CATALOGUE", "DESIGN_ROWS", "Defect", "register"]
