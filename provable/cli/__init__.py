"""The ``pv`` command: ``main`` parses and dispatches, ``analysis`` holds the per-contract
analysis commands, ``exits`` the exit codes they share.
"""
