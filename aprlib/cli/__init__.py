"""The ``apr`` command: one module per command group; each imports its engine only when its
command runs.
"""
