"""provable: contract-driven falsification.

A generic contract engine: YAML contracts state claims, each claim carries falsifiers, a
pytest plugin binds falsifiers to tests and rewrites statuses with evidence. It knows
nothing about models; that is ``aprlib``'s business.
"""

__version__ = "0.1.0"
