"""Two model files in, one diagnosis out: the pair scan, rounding bounds, classification of
each tensor pair, swaps, config comparison, the DIAGNOSIS text, and the one-file consistency
checks that ``apr inspect`` prints.
"""
