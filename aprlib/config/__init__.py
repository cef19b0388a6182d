"""What a model is: its configuration (``ModelConfig``), how config.json and GGUF keys spell
it, the named presets and the RoPE-scaling arithmetic. Imports nothing above
``aprlib.errors``.
"""
