"""Running a model: the reference ``Transformer`` and its ``Ops`` backends, logits, trace,
bisect, qa, and llama.cpp as an oracle in a child process.
"""
