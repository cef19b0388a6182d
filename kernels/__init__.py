"""Triton kernels of the forward pass, each beside the torch reference it must match."""
